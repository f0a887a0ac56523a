"""`samullm costmodel fit|show`: fit latency models from profiles; show what a model costs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from costmodel.hardware import DeviceSpec, cpu_device_spec, get_device_preset
from costmodel.interface import Batch
from costmodel.latency_fit import fit_latency_model, fit_options_for, record_fit_errors, without_longest_context
from costmodel.latency_library import latency_model_for, save_latency_models
from costmodel.latency_predict import learn_factors
from costmodel.models import load_model_spec
from costmodel.profiles import find_profiles, read_profile
from costmodel.startup import load_seconds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("costmodel", help="fit and inspect per-iteration latency models")
    sub = parser.add_subparsers(dest="costmodel_command", metavar="ACTION", required=True)

    fit = sub.add_parser("fit", help="fit a latency model per MODEL_tpN.csv profile and learn "
                                     "the factors that predict models without a profile")
    fit.add_argument("--profiles", required=True, help="folder of MODEL_tpN.csv profiles")
    fit.add_argument("--out", required=True,
                     help="output: a directory (one JSON per model and TP, plus factors.json) "
                          "or a .json bundle file")
    fit.add_argument("--device", default="a100-80gb",
                     help="device the profiles were measured on: a device or node preset, or "
                          "'cpu' for this machine's cores (default: a100-80gb)")
    fit.add_argument("--configs", default=None, help="model configs table (model_configs.json format)")
    fit.add_argument("--engine", choices=("auto", "v0_padded", "v1"), default="auto",
                     help="engine the profiles come from: v0_padded (the A100 data's, with its wait for "
                          "the longest sequence) or v1 (this vLLM, no such wait); auto: v1 for profiles "
                          "written by `samullm profile` (a .meta.json beside them), else v0_padded")
    fit.set_defaults(func=run_fit)

    show = sub.add_parser("show", help="the latency model chosen for a model, TP and device")
    show.add_argument("--model", required=True)
    show.add_argument("--tp", type=int, default=1)
    show.add_argument("--device", default="a100-80gb")
    show.add_argument("--fitted", default=None, help="fitted models (directory or file) to use")
    show.add_argument("--configs", default=None)
    show.set_defaults(func=run_show)


def profile_engine(csv_path: Path) -> str:
    """v1 for a profile `samullm profile` wrote (it leaves MODEL_tpN.meta.json beside the CSV)."""
    return "v1" if csv_path.with_suffix(".meta.json").is_file() else "v0_padded"


def resolve_device(name: str) -> DeviceSpec:
    return cpu_device_spec() if name in ("cpu", "cpu-core") else get_device_preset(name)


def run_fit(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    # Read and check every input before fitting anything.
    paths = find_profiles(args.profiles)
    profiles = [read_profile(path) for path in paths]
    specs = [load_model_spec(rows.model, args.configs) for rows in profiles]
    for rows, spec in zip(profiles, specs):
        spec.heads_per_device(rows.tp)

    console = Console()
    table = Table(title=f"Fitted latency models ({device.name})")
    for column in ("model", "TP", "rows", "median err", "p90 err"):
        table.add_column(column, justify="right" if column != "model" else "left")
    models, errors, factor_rows = [], [], []
    for path, rows, spec in zip(paths, profiles, specs):
        engine = args.engine if args.engine != "auto" else profile_engine(path)
        model = fit_latency_model(rows, spec, device, fit_options_for(engine))
        model.info["engine"] = engine
        error = record_fit_errors(model, rows)
        # the factors must not learn a wait v1 profiles cannot show
        factor_rows.append((without_longest_context(rows) if engine == "v1" else rows, spec))
        models.append(model)
        errors.append(error)
        table.add_row(rows.model, str(rows.tp), str(len(rows)), f"{np.median(error):.2%}",
                      f"{np.percentile(error, 90):.2%}")
    factors = learn_factors(factor_rows, device)
    written = save_latency_models(models, factors, args.out)
    console.print(table)
    console.print(f"wrote {len(written)} files to {args.out}")
    pooled = np.concatenate(errors)
    print(json.dumps({"models": len(models), "device": device.name, "out": str(args.out),
                      "train_median": round(float(np.median(pooled)), 5),
                      "train_p90": round(float(np.percentile(pooled, 90)), 5)}))
    return 0


def run_show(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    spec = load_model_spec(args.model, args.configs)
    model = latency_model_for(spec, args.tp, device, args.fitted)
    console = Console()
    console.print(f"{spec.name} TP {args.tp} on {device.name}: {model.kind} model ({model.source})")
    table = Table(title="seconds per iteration")
    table.add_column("batch")
    table.add_column("seconds", justify="right")
    shapes = {
        "prefill 1 x 512 tokens": Batch(1, 512, 512.0 * 512),
        "prefill 8 x 512 tokens": Batch(8, 4096, 8 * 512.0 * 512),
        "decode 1 seq, 512 context": Batch(decode_seqs=1, decode_context=512),
        "decode 64 seqs, 512 context each": Batch(decode_seqs=64, decode_context=64 * 512),
        "decode 256 seqs, 1024 context each": Batch(decode_seqs=256, decode_context=256 * 1024),
        "mixed: 256-token chunk + 64 decodes": Batch(1, 256, 256.0 * 256, 64, 64 * 512),
    }
    figures = {}
    for label, batch in shapes.items():
        seconds = model.iteration_time(batch)
        figures[label] = round(seconds, 6)
        table.add_row(label, f"{seconds:.4f}")
    console.print(table)
    startup = load_seconds(spec, args.tp, device)
    console.print(f"engine start-up: {startup:.1f} s")
    print(json.dumps({"model": spec.name, "tp": args.tp, "device": device.name, "kind": model.kind,
                      "load_seconds": round(startup, 2), "iteration_seconds": figures}))
    return 0
