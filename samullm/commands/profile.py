"""`samullm profile`: per-iteration latency profiles of a model on this machine's engines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from samullm.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="sweep batch shapes on a real engine and write MODEL_tpN.csv latency profiles",
        description=(
            "Run pure prefill, pure decode and mixed (chunked prefill) batches on a real vLLM "
            "engine for each TP degree and write one CSV per degree in the format of "
            "../shared/data/a100_iteration_latency (plus Batch columns), for `samullm costmodel fit`."
        ),
    )
    parser.add_argument("--model", required=True, help="model directory (e.g. from make-tiny-model)")
    parser.add_argument("--tp", default="1", help="comma-separated TP degrees (default 1)")
    parser.add_argument("--devices", default="cpu", help="cpu | gpu | node file (default cpu)")
    parser.add_argument("--out", required=True, help="output directory for the CSVs")
    parser.add_argument("--quick", action="store_true", help="a handful of shapes (a smoke test)")
    parser.add_argument("--repeats", type=int, default=1, help="run every shape this many times")
    parser.add_argument("--max-model-len", type=int, default=2048)
    # vllm.LLM's defaults on CPU at TP=1; profile with the values your engines will run with.
    parser.add_argument("--max-num-batched-tokens", type=int, default=4096, help="token budget per iteration")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument(
        "--kv-cache-gib", type=float, default=0.5, help="KV cache size per engine in GiB (default 0.5)"
    )
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per TP degree")
    parser.set_defaults(func=run)


def _tp_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"--tp {text!r}: give comma-separated integers, e.g. 1,2") from None
    if not values or any(v < 1 for v in values):
        raise UserInputError(f"--tp {text!r}: TP degrees must be positive integers")
    return values


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from samullm.devices import resolve_device_set
    from samullm.profiler import default_sweep, phase_summary, profile_model, quick_sweep
    from samullm.worker.messages import EngineOptions

    tps = _tp_list(args.tp)
    if not Path(args.model, "config.json").is_file():
        raise UserInputError(f"--model {args.model}: not a model directory (no config.json)")
    if args.repeats < 1:
        raise UserInputError("--repeats must be at least 1")
    devices = resolve_device_set(args.devices)
    too_big = [tp for tp in tps if tp > len(devices.device_ids)]
    if too_big:
        raise UserInputError(
            f"--tp {too_big}: larger than the {len(devices.device_ids)} {devices.kind} device(s) available"
        )
    sweep = quick_sweep() if args.quick else default_sweep(args.max_num_batched_tokens)
    if args.repeats != 1:
        from dataclasses import replace

        sweep = replace(sweep, repeats=args.repeats)
    engine = EngineOptions(
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        kv_cache_memory_bytes=int(args.kv_cache_gib * (1 << 30)),
        dtype=args.dtype,
    )
    console = Console(stderr=True)
    table = Table(title=f"profile of {Path(args.model).name}")
    for column in ("TP", "phase", "iterations", "median iteration (ms)"):
        table.add_column(column, justify="right")
    summary = {}
    for tp in tps:
        console.print(f"profiling TP={tp} on {devices.kind} devices {list(devices.device_ids[:tp])} ...")
        result = profile_model(args.model, tp, devices, args.out, sweep, engine, timeout_s=args.timeout)
        phases = phase_summary(result.records)
        for phase, figures in phases.items():
            table.add_row(str(tp), phase, str(figures["iterations"]), f"{figures['median_s'] * 1e3:.2f}")
        loaded = result.outcome.loaded
        summary[f"tp{tp}"] = {
            "csv": str(result.csv_path),
            "iterations": result.rows,
            "load_s": round(loaded.load_s, 2) if loaded else None,
        }
    Console().print(table)
    print(json.dumps(summary))
    return 0
