"""`samullm calibrate`: profile models on this machine and fit the cost model to them."""

from __future__ import annotations

import argparse
import json

from samullm.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="profile models on this machine's engines and fit latency, start-up and overhead",
        description=(
            "For each model and TP degree: profile a real engine (samullm profile's sweep, "
            "extended to the batches real runs make), fit the per-iteration latency model, and "
            "store it where the cost model finds it (SAMULLM_LATENCY_DIR=the root printed); "
            "then fit engine start-up and the worker's per-step overhead on every profile of "
            "the device. Cached: unchanged models, devices and settings are not profiled again."
        ),
    )
    parser.add_argument("--models", default="tiny-s,tiny-m,tiny-l",
                        help="comma-separated tiny presets or model directories (default: the 3 presets)")
    parser.add_argument("--tp", default="1,2", help="comma-separated TP degrees (default 1,2)")
    parser.add_argument("--devices", default="cpu", help="cpu | gpu | node file (default cpu)")
    parser.add_argument("--root", default=None,
                        help="calibration root (default: first $SAMULLM_LATENCY_DIR entry, else "
                             "$SAMULLM_HOME/calibration, else ./.samullm/calibration)")
    parser.add_argument("--repeats", type=int, default=1, help="run every swept shape this many times")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0,
                        help="CPU: KV cache per engine rank in GiB (default 1.0)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="a handful of shapes (smoke test)")
    parser.add_argument("--force", action="store_true", help="profile again even if cached")
    parser.set_defaults(func=run)


def parse_list(text: str, what: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise UserInputError(f"--{what} {text!r}: give a comma-separated list")
    return items


def parse_tps(text: str) -> list[int]:
    try:
        values = [int(part) for part in parse_list(text, "tp")]
    except ValueError:
        raise UserInputError(f"--tp {text!r}: give comma-separated integers, e.g. 1,2") from None
    if any(v < 1 for v in values):
        raise UserInputError(f"--tp {text!r}: TP degrees must be positive")
    return values


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from costmodel.hardware import resolve_node
    from samullm.calibrate import CalibrationSettings, calibrate
    from samullm.devices import resolve_device_set

    if args.repeats < 1:
        raise UserInputError("--repeats must be at least 1")
    if args.kv_cache_gib <= 0:
        raise UserInputError("--kv-cache-gib must be positive")
    models = parse_list(args.models, "models")
    tps = parse_tps(args.tp)
    devices = resolve_device_set(args.devices)
    device = resolve_node(args.devices).devices[0]
    settings = CalibrationSettings(max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                                   repeats=args.repeats, quick=args.quick)
    err = Console(stderr=True)
    result = calibrate(models, tps, devices, device, settings,
                       root=Path(args.root) if args.root else None, force=args.force,
                       log=err.print)

    table = Table(title=f"calibration on {result.device} ({result.root})")
    for column in ("engine", "profile", "rows", "fit median err", "fit total err", "start-up s", "load avg"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for e in result.engines:
        table.add_row(f"{e.name}", "measured" if e.profiled else "cached", str(e.profile_rows),
                      f"{e.train_median_error:.1%}", f"{e.train_total_error:+.1%}", f"{e.startup_s:.1f}",
                      f"{e.load_average:.1f}" + (" !" if e.disturbed else ""))
    Console().print(table)
    disturbed = [e.name for e in result.engines if e.disturbed]
    if disturbed:
        err.print(f"[yellow]other processes competed for the cores while profiling {', '.join(disturbed)} "
                  f"(load average above TP + 1): those iterations are slow; calibrate again on a quiet "
                  f"machine with --force[/yellow]")
    o = result.overhead
    err.print(f"start-up fit: {result.startup.to_dict()['fixed_seconds']} s per TP degree; worker "
              f"overhead: {o.per_step * 1e3:.2f} ms/step, +{o.per_finishing_step * 1e3:.2f} ms per "
              f"step finishing rows, {o.per_row * 1e3:.3f} ms/row")
    err.print(f"use it: export SAMULLM_LATENCY_DIR={result.root}")
    print(json.dumps({
        "root": str(result.root), "device": result.device,
        "engines": {f"{e.name}": {"profiled": e.profiled, "rows": e.profile_rows,
                                  "fit_median_error": e.train_median_error,
                                  "fit_total_error": e.train_total_error,
                                  "startup_s": e.startup_s, "load_average": e.load_average}
                    for e in result.engines},
        "startup": result.startup.to_dict(), "overhead": o.to_dict(),
        "seconds": round(result.seconds, 2)}))
    return 0
