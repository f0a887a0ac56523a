"""The `samullm` command line.

Each subcommand lives in its own module under `samullm.commands` and exposes
`register(subparsers) -> None`; the parser it adds sets `func(args) -> int | None`.
Modules are discovered so that adding a command never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from samullm import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samullm",
        description="Plan and run multi-LLM offline inference by sampling and simulation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserInputError as err:  # bad input: one clear line, no traceback
        print(f"samullm: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


from samullm.errors import UserInputError  # noqa: E402  (kept last: errors is a leaf module)

if __name__ == "__main__":
    sys.exit(main())
