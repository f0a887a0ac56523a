"""A node's result files: the engine workers' checkpoints, and the final column with its manifest.

Checkpoint (local, under the runner's home): each engine worker of a node writes its own part
file, `part-<launch>-<replica>-<restart>.jsonl`, one `RowResult` JSON line per finished row,
flushed and fsynced every engine step (`samullm.worker.results.ResultWriter`). The node's done
rows are the union of its parts, first copy of a row id wins (names sort in the order the parts
were made). A worker started again (crash, re-plan, runner restart) gets only the rows no part
holds, and a new part, and only after every earlier worker of the node has exited: so a row is
computed once.

Final column (where the run's results go: a local path or any fsspec URL): when a node
succeeds, its rows in dataset order go to `<results>/<app_run_id>/<node>.jsonl`, then its
manifest to `<node>.manifest.json` beside it. The manifest is written last: one that exists
describes a complete column file. Only the manifest travels through Airflow's XCom.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from samullm.api import ResultManifest
from samullm.worker.messages import RowResult
from samullm.worker.results import iter_results

COLUMN_FIELDS = ("row_id", "text", "prompt_tokens", "output_tokens", "finish_reason", "error")


class NodeCheckpoint:
    """The part files of one node of one run, in `directory`."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def part_path(self, launch: int, replica: int, restart: int = 0) -> Path:
        return self.dir / f"part-{launch:04d}-{replica:02d}-{restart:02d}.jsonl"

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.jsonl")) if self.dir.is_dir() else []

    def results(self) -> dict[str, RowResult]:
        """Every row done so far (first copy of a row id wins)."""
        out: dict[str, RowResult] = {}
        for part in self.parts():
            for result in iter_results(part):
                out.setdefault(result.row_id, result)
        return out

    def done_ids(self) -> set[str]:
        return set(self.results())

    def line_counts(self) -> Counter[str]:
        """How many complete lines name each row id, over all parts (1 everywhere when no row
        was ever computed twice)."""
        counts: Counter[str] = Counter()
        for part in self.parts():
            with part.open("rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        counts[RowResult.model_validate_json(line).row_id] += 1
                    except ValidationError:
                        continue
        return counts


class PartTail:
    """Reads the rows appended to a part file since the last call (complete lines only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0

    def read_new(self) -> list[RowResult]:
        if not self.path.exists():
            return []
        out = []
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        for line in data[: end + 1].splitlines():
            try:
                out.append(RowResult.model_validate_json(line))
            except ValidationError:
                continue  # a torn line a killed worker left, terminated by its successor
        self._offset += end + 1
        return out


# --- the final column ----------------------------------------------------------------------------


def join_uri(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URL (no normalisation of the base)."""
    return "/".join([base.rstrip("/"), *parts])


def column_uri(results_base: str, app_run_id: str, node: str) -> str:
    return join_uri(results_base, app_run_id, f"{node}.jsonl")


def _write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file at `uri` (a temporary name, then moved into place)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    fs.mv(tmp, path)


def _read_bytes(uri: str) -> bytes:
    import fsspec

    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def column_record(result: RowResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in COLUMN_FIELDS}


def write_column(
    results_base: str,
    app_run_id: str,
    node: str,
    model: str,
    row_ids: Sequence[str],
    results: dict[str, RowResult],
) -> ResultManifest:
    """Write the node's column (rows in `row_ids` order; each must have a result), then its
    manifest; return the manifest."""
    missing = [r for r in row_ids if r not in results]
    if missing:
        raise ValueError(f"node {node!r}: {len(missing)} rows have no result (first: {missing[:3]})")
    ordered = [results[r] for r in row_ids]
    uri = column_uri(results_base, app_run_id, node)
    data = "".join(json.dumps(column_record(r)) + "\n" for r in ordered).encode()
    _write_bytes(uri, data)
    manifest = ResultManifest(
        app_run_id=app_run_id,
        node=node,
        model=model,
        uri=uri,
        manifest_uri=uri[: -len(".jsonl")] + ".manifest.json",
        rows=len(ordered),
        failed_rows=sum(r.finish_reason == "error" for r in ordered),
        prompt_tokens=sum(r.prompt_tokens for r in ordered),
        output_tokens=sum(r.output_tokens for r in ordered),
        written_at=dt.datetime.now(dt.timezone.utc),
    )
    _write_bytes(manifest.manifest_uri, manifest.model_dump_json(indent=2).encode())
    return manifest


def read_column(uri: str) -> list[dict[str, Any]]:
    """The records of a column file, in order."""
    return [json.loads(line) for line in _read_bytes(uri).decode().splitlines() if line.strip()]


def read_manifest(uri: str) -> ResultManifest:
    return ResultManifest.model_validate_json(_read_bytes(uri))


def texts_by_row(results: Iterable[RowResult]) -> dict[str, str]:
    """Row id -> output text of the rows that succeeded (what downstream prompts read)."""
    return {r.row_id: r.text for r in results if r.finish_reason != "error"}
