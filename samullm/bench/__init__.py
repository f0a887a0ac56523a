"""Benchmarks behind `samullm bench NAME`.

Each module defines `NAME: str`, `HELP: str`, `add_arguments(parser)` and
`run(args) -> dict`; it prints its own table, and the returned dict is printed
by the `bench` command as the final JSON line.
"""
