"""Result files: checkpoints merged over parts (each row once, first copy wins, torn lines
skipped), tailing a part as it grows, and the final column + manifest through fsspec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samullm.results import NodeCheckpoint, PartTail, read_column, read_manifest, write_column
from samullm.worker.messages import RowResult
from samullm.worker.results import ResultWriter


def result(row: str, text: str = "t", tokens: int = 2, reason: str = "stop", error: str | None = None) -> RowResult:
    return RowResult(row_id=row, text=text, prompt_tokens=5, output_tokens=tokens, finish_reason=reason,
                     error=error, finished_at=1.0)


def write(path: Path, rows: list[RowResult], torn: str = "") -> None:
    writer = ResultWriter(path)
    writer.write(rows)
    writer.close()
    if torn:
        with path.open("ab") as fh:
            fh.write(torn.encode())


def test_checkpoint_merges_parts_first_copy_wins_and_skips_torn_lines(tmp_path):
    cp = NodeCheckpoint(tmp_path / "node")
    assert cp.results() == {} and cp.parts() == []
    write(cp.part_path(1, 0), [result("0", "first"), result("2")], torn='{"row_id": "9", "te')
    write(cp.part_path(1, 1), [result("1")])
    write(cp.part_path(2, 0), [result("0", "second"), result("3")])
    results = cp.results()
    assert sorted(results) == ["0", "1", "2", "3"]
    assert results["0"].text == "first"  # parts sort in the order they were made
    assert cp.line_counts() == {"0": 2, "1": 1, "2": 1, "3": 1}


def test_tail_reads_each_complete_line_once_as_the_part_grows(tmp_path):
    path = tmp_path / "part.jsonl"
    tail = PartTail(path)
    assert tail.read_new() == []  # not there yet
    write(path, [result("0"), result("1")], torn='{"row_id": "2"')
    assert [r.row_id for r in tail.read_new()] == ["0", "1"]
    assert tail.read_new() == []
    # the worker's next write terminates the torn line first; that line is then skipped
    write(path, [result("3")])
    assert [r.row_id for r in tail.read_new()] == ["3"]


def test_column_is_written_in_row_order_then_its_manifest(tmp_path):
    results = {"1": result("1", "b", 3), "0": result("0", "a", 4, "length"), "2": result("2", "", 0, "error", "too long")}
    manifest = write_column(str(tmp_path / "out"), "dag.run1", "judge", "m", ["0", "1", "2"], results)
    assert manifest.uri == str(tmp_path / "out" / "dag.run1" / "judge.jsonl")
    assert (manifest.rows, manifest.failed_rows, manifest.output_tokens, manifest.prompt_tokens) == (3, 1, 7, 15)
    column = read_column(manifest.uri)
    assert [r["row_id"] for r in column] == ["0", "1", "2"]
    assert column[2] == {"row_id": "2", "text": "", "prompt_tokens": 5, "output_tokens": 0, "finish_reason": "error",
                         "error": "too long"}
    assert read_manifest(manifest.manifest_uri) == manifest
    assert not list((tmp_path / "out" / "dag.run1").glob("*.tmp"))
    with pytest.raises(ValueError, match="no result"):
        write_column(str(tmp_path), "r", "n", "m", ["0", "7"], results)


def test_column_goes_to_any_fsspec_url():
    import fsspec

    results = {"0": result("0", "x")}
    manifest = write_column("memory://bucket/results", "r1", "n", "m", ["0"], results)
    assert manifest.uri == "memory://bucket/results/r1/n.jsonl"
    assert read_column(manifest.uri)[0]["text"] == "x"
    fs = fsspec.filesystem("memory")
    assert json.loads(fs.cat("/bucket/results/r1/n.manifest.json"))["rows"] == 1
