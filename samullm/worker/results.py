"""The result file of a node: one JSON line per finished row, appended and synced per step.

A worker killed with -9 can leave a torn last line; readers skip lines that do not parse and
the writer starts a fresh line, so a row is either wholly present or absent (and then re-run).
A row present twice (never written so, but tolerated) counts once: the first copy wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from samullm.worker.messages import IterationRecord, RowResult


def iter_results(path: str | Path) -> Iterator[RowResult]:
    """Complete rows of a result file, first copy of each row id; nothing if it does not exist."""
    p = Path(path)
    if not p.exists():
        return
    seen: set[str] = set()
    with p.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn last line: written by a worker that died mid-write
            try:
                result = RowResult.model_validate_json(line)
            except ValidationError:
                continue
            if result.row_id not in seen:
                seen.add(result.row_id)
                yield result


def read_results(path: str | Path) -> dict[str, RowResult]:
    return {r.row_id: r for r in iter_results(path)}


def done_row_ids(path: str | Path) -> set[str]:
    return {r.row_id for r in iter_results(path)}


class ResultWriter:
    """Appends finished rows; `write` returns once they are on disk (flush + fsync)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._terminate_torn_line()

    def _terminate_torn_line(self) -> None:
        size = self._file.tell()
        if size == 0:
            return
        with self.path.open("rb") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                self._file.write(b"\n")

    def write(self, results: Iterable[RowResult]) -> int:
        data = b"".join(r.model_dump_json().encode() + b"\n" for r in results)
        if not data:
            return 0
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        return data.count(b"\n")

    def close(self) -> None:
        self._file.close()


def read_iterations(path: str | Path) -> list[IterationRecord]:
    """Complete records of an iteration log (a torn last line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    with p.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                records.append(IterationRecord.model_validate_json(line))
            except ValidationError:
                continue
    return records
