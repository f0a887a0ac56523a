"""`samullm bench latency`: how well the per-iteration latency models predict measured iterations.

Three errors, each |predicted / measured - 1| pooled over iterations:
  seen      for every (model, TP) in --profiles: fit on a random half of its iterations,
            predict the other half;
  left_out  for every model in --profiles: predict its iterations from its config, with the
            factors learned on the other models of the folder and their fitted curves as
            references (a profiled twin of the same architecture stays in: that transfer is
            part of the method); the table also shows the stricter leave-one-architecture-out;
  unseen    every iteration of the models in --unseen (and those moved there by --hold-out),
            predicted from their configs with factors and references from all of --profiles.
The table also shows the measured-rows interpolator on the seen split.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from rich.console import Console
from rich.table import Table

from costmodel.errors import UserInputError
from costmodel.latency import AdditiveLatencyModel
from costmodel.latency_fit import fit_latency_model
from costmodel.latency_library import measured_latency_model
from costmodel.latency_predict import LearnOptions, Reference, learn_factors, predict_latency_model
from costmodel.models import ModelSpec, load_model_spec
from costmodel.profiles import ProfileRows, find_profiles, read_profile
from samullm.commands.costmodel import resolve_device

NAME = "latency"
HELP = "accuracy of the per-iteration latency models on measured profiles"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiles", required=True, help="folder of MODEL_tpN.csv profiles")
    parser.add_argument("--unseen", default=None,
                        help="folder of profiles of models predicted from their configs only")
    parser.add_argument("--hold-out", default="",
                        help="comma list of models of --profiles to treat as unseen instead")
    parser.add_argument("--only", default="",
                        help="comma list: use only these models of --profiles (quick runs)")
    parser.add_argument("--configs", default=None, help="model configs table (model_configs.json format)")
    parser.add_argument("--device", default="a100-80gb", help="device the profiles were measured on")
    parser.add_argument("--rows", type=int, default=0,
                        help="use at most this many iterations per profile (0: all)")
    parser.add_argument("--seed", type=int, default=0)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _read_folder(folder: str, rows_cap: int, seed: int) -> list[ProfileRows]:
    profiles = []
    for path in find_profiles(folder):
        rows = read_profile(path)
        if rows_cap and len(rows) > rows_cap:
            keep = np.random.default_rng(seed).permutation(len(rows))[:rows_cap]
            rows = rows.subset(np.sort(keep))
        profiles.append(rows)
    return profiles


def _errors(model: AdditiveLatencyModel, rows: ProfileRows, index=None) -> np.ndarray:
    index = range(len(rows)) if index is None else index
    predicted = np.array([model.iteration_time(rows.batch(i)) for i in index])
    return np.abs(predicted / rows.seconds[list(index)] - 1)


def _architecture(spec: ModelSpec) -> tuple:
    fields = spec.to_dict()
    for key in ("name", "max_position_embeddings", "tie_word_embeddings"):
        fields.pop(key)
    return tuple(sorted(fields.items()))


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    device = resolve_device(args.device)
    held = set(_names(args.hold_out))
    only = set(_names(args.only))
    profiles = _read_folder(args.profiles, args.rows, args.seed)
    names = {p.model for p in profiles}
    for name in held | only:
        if name not in names:
            raise UserInputError(f"--hold-out/--only names {name!r}, which has no profile in "
                                 f"{args.profiles} (models: {', '.join(sorted(names))})")
    unseen = [p for p in profiles if p.model in held]
    profiles = [p for p in profiles if p.model not in held and (not only or p.model in only)]
    if args.unseen:
        unseen += _read_folder(args.unseen, args.rows, args.seed)
    if not profiles:
        raise UserInputError("no profiles left to fit after --hold-out/--only")
    specs = {p.model: load_model_spec(p.model, args.configs) for p in profiles + unseen}
    for p in profiles + unseen:
        specs[p.model].heads_per_device(p.tp)

    rng = np.random.default_rng(args.seed)
    per_model: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    # Seen: fit on a random half, predict the other half (and the interpolator likewise).
    for rows in profiles:
        order = rng.permutation(len(rows))
        train, test = np.sort(order[: len(rows) // 2]), order[len(rows) // 2:]
        spec = specs[rows.model]
        fitted = fit_latency_model(rows.subset(train), spec, device)
        per_model[rows.model]["seen"].append(_errors(fitted, rows, test))
        measured = measured_latency_model(rows.subset(train), spec, device)
        per_model[rows.model]["interpolated"].append(_errors(measured, rows, test))

    # References: every profile fitted on all its iterations.
    references = {(p.model, p.tp): Reference(specs[p.model], fit_latency_model(p, specs[p.model], device))
                  for p in profiles}

    def predict_group(left: set[str], key: str) -> None:
        train = [(p, specs[p.model]) for p in profiles if p.model not in left]
        if not train:
            return
        factors = learn_factors(train, device, LearnOptions(seed=args.seed))
        refs = [references[(p.model, p.tp)] for p, _ in train]
        for rows in profiles:
            if rows.model in left:
                model = predict_latency_model(specs[rows.model], rows.tp, device, factors, refs)
                per_model[rows.model][key].append(_errors(model, rows))

    models = sorted({p.model for p in profiles})
    for name in models:
        predict_group({name}, "left_out")
    architectures = defaultdict(set)
    for name in models:
        architectures[_architecture(specs[name])].add(name)
    for group in architectures.values():
        predict_group(group, "left_out_arch")

    if unseen:
        train = [(p, specs[p.model]) for p in profiles]
        factors = learn_factors(train, device, LearnOptions(seed=args.seed))
        refs = list(references.values())
        for rows in unseen:
            model = predict_latency_model(specs[rows.model], rows.tp, device, factors, refs)
            per_model[rows.model]["unseen"].append(_errors(model, rows))

    keys = ("seen", "interpolated", "left_out", "left_out_arch", "unseen")
    pooled = {k: np.concatenate([e for m in per_model.values() for e in m.get(k, [])] or [np.array([])])
              for k in keys}
    _print_table(per_model, pooled, keys, device.name, held, time.perf_counter() - started)

    def stat(key: str, q: float) -> float:
        values = pooled[key]
        return round(float(np.percentile(values, q)), 5) if len(values) else float("nan")

    figures = {"seen_median": stat("seen", 50), "seen_p90": stat("seen", 90),
               "left_out_median": stat("left_out", 50), "left_out_p90": stat("left_out", 90)}
    if unseen:
        figures.update({"unseen_median": stat("unseen", 50), "unseen_p90": stat("unseen", 90)})
    return figures


def _print_table(per_model, pooled, keys, device_name: str, held: set[str], seconds: float) -> None:
    table = Table(title=f"Latency model error |pred/measured - 1| on {device_name} "
                        f"(median / p90 over iterations)")
    table.add_column("model")
    labels = {"seen": "seen (fitted)", "interpolated": "seen (interp.)", "left_out": "left out",
              "left_out_arch": "left out (arch.)", "unseen": "unseen"}
    for key in keys:
        table.add_column(labels[key], justify="right")

    def cell(values: list[np.ndarray]) -> str:
        if not values:
            return "-"
        joined = np.concatenate(values)
        return f"{np.median(joined):.1%} / {np.percentile(joined, 90):.1%}"

    for name in sorted(per_model):
        table.add_row(name, *(cell(per_model[name].get(k, [])) for k in keys))
    table.add_row("ALL", *(cell([pooled[k]] if len(pooled[k]) else []) for k in keys), style="bold")
    console = Console(width=max(Console().width, 130))
    console.print(table)
    if held:
        console.print(f"held out as unseen: {', '.join(sorted(held))}")
    console.print(f"{seconds:.0f} s")
