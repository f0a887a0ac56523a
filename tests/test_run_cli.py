"""`samullm run`: bad input is one clear line before any engine starts; a two-node chain runs on
real engines with every row exactly once, a prompt longer than the context failing alone (and
said so in the summary), plans and stages recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from samullm.results import NodeCheckpoint, read_column, read_manifest
from samullm.store import Store

ROOT = Path(__file__).resolve().parents[1]
LONG_TEXT = " ".join(f"word{i} and the lorem" for i in range(400))  # far beyond 256 tokens


def samullm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "samullm", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def chain(model_a, model_b, **node_a) -> dict:
    questions = ["what is two", "name a colour", "say hello", "count to three", "pick a fruit", LONG_TEXT]
    return {
        "name": "chain",
        "dataset": {"rows": [{"q": q} for q in questions]},
        "nodes": [
            # TP1 pinned (replicas and devices left to the planner): TP2 over two busy cores is
            # slow to start and to run, which the uncalibrated CPU latency model does not know.
            {"name": "a", "model": str(model_a), "prompt": "Q: {{ q }}\nA:", "plan": {"tp": 1},
             "sampling": {"max_tokens": 8, "ignore_eos": True}, "engine": {"max_model_len": 256}, **node_a},
            {"name": "b", "model": str(model_b), "prompt": "Judge this answer: {{ a }}", "plan": {"tp": 1},
             "sampling": {"max_tokens": 6, "ignore_eos": True}, "engine": {"max_model_len": 256}},
        ],
    }


def write_app(tmp_path: Path, app: dict) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(app))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "/no/such/model"}, "unknown model '/no/such/model'"),
        ({"plan": {"tp": 8}}, "pinned plan TP8"),
    ],
)
def test_bad_input_is_one_line_and_nothing_starts(tmp_path, tiny_s, change, message):
    import os

    if "plan" in change and len(os.sched_getaffinity(0)) >= 8:
        pytest.skip("this machine has 8 devices")
    app = write_app(tmp_path, chain(tiny_s, tiny_s, **change))
    result = samullm("run", str(app), "--home", str(tmp_path / "home"), timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "runs").exists()  # no engine, no checkpoint


@pytest.mark.integration
def test_two_node_chain_runs_every_row_once(tmp_path, tiny_s, tiny_model_dir):
    app = write_app(tmp_path, chain(tiny_s, tiny_model_dir("tiny-m")))
    home, results = tmp_path / "home", tmp_path / "results"
    result = samullm("run", str(app), "--home", str(home), "--results", str(results), "--run-id", "c1")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["state"] == "success"
    assert summary["nodes"]["a"]["rows"] == 6 and summary["nodes"]["a"]["failed_rows"] == 1
    assert summary["nodes"]["b"]["rows"] == 6 and summary["nodes"]["b"]["failed_rows"] == 0
    assert summary["plans"] >= 2 and summary["stages_actual"] >= 2  # re-planned when a finished
    assert "1 rows failed" in result.stdout and "planned stages" in result.stdout

    for node, tokens in (("a", 8), ("b", 6)):
        manifest = read_manifest(str(results / "c1" / f"{node}.manifest.json"))
        column = read_column(manifest.uri)
        assert [r["row_id"] for r in column] == [str(i) for i in range(6)]
        ok = [r for r in column if r["finish_reason"] != "error"]
        assert all(r["output_tokens"] == tokens for r in ok)
        counts = NodeCheckpoint(home / "runs" / "c1" / node).line_counts()
        assert set(counts.values()) == {1} and len(counts) == 6
    failed = read_column(str(results / "c1" / "a.jsonl"))[5]
    assert failed["finish_reason"] == "error" and "256" in failed["error"]
    # b ran every row, the one whose upstream failed included (it reads empty text there)
    store = Store(f"sqlite:///{home / 'store.db'}")
    try:
        stages = store.stages("c1")
        assert [s.nodes[0]["node"] for s in stages][0] == "a" and stages[-1].nodes[0]["node"] == "b"
        assert store.observations(str(tiny_s), "output_lengths")[0].payload["censored"] == [True] * 5
        assert store.observations(str(tiny_s), "latency")  # iteration latencies kept for later plans
        assert store.observations(str(tiny_s), "engine_limits")[0].payload["block_size"] == 128
    finally:
        store.close()
