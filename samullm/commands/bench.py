"""`samullm bench NAME`: benchmarks that print a table and end with one JSON line."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil

from samullm import bench


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark (ends with one JSON line)")
    bench_sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{bench.__name__}.{info.name}")
        sub = bench_sub.add_parser(module.NAME, help=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(func=_runner(module))


def _runner(module):
    def run(args: argparse.Namespace) -> int:
        figures = module.run(args)
        print(json.dumps(figures, sort_keys=False))
        return 0

    return run
