"""The runner on real vLLM engines (tiny models, CPU): an engine worker killed with -9 mid-node
is restarted with its missing rows; a plan that moves a running node stops it and starts it
elsewhere with only the rows without a result; the runner killed with -9 mid-run resumes from
the store when started again. Every row ends exactly once; none is computed twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from samullm.api import RegisterApplication
from samullm.results import NodeCheckpoint, read_column
from samullm.runner import Runner
from samullm.runtime.config import make_config
from samullm.store import Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # engine starts take 10-60 s on a busy two-core machine


def long_app(model, rows: int, devices: list[int] | None = None, name: str = "long") -> dict:
    """One node whose rows take a while (imposed output lengths, few sequences at a time)."""
    node = {
        "name": "gen", "model": str(model), "prompt": "Say {{ q }}",
        "sampling": {"max_tokens": 120, "ignore_eos": True},
        "engine": {"max_model_len": 256, "max_num_seqs": 2},
    }
    if devices is not None:
        node["plan"] = {"tp": 1, "devices": devices}
    return {"name": name, "dataset": {"rows": [{"q": f"row {i} " + "ab " * (i % 7)} for i in range(rows)]},
            "nodes": [node]}


def wait_until(predicate, timeout: float = TIMEOUT, what: str = "condition", poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def assert_each_row_once(checkpoint: NodeCheckpoint, column_uri: str, rows: int) -> None:
    counts = checkpoint.line_counts()
    assert sorted(counts, key=int) == [str(i) for i in range(rows)], "a row is missing from the parts"
    assert set(counts.values()) == {1}, f"rows computed twice: {[r for r, c in counts.items() if c > 1]}"
    column = read_column(column_uri)
    assert [r["row_id"] for r in column] == [str(i) for i in range(rows)]
    assert all(r["output_tokens"] == 120 and r["finish_reason"] == "length" for r in column)


def two_devices(config) -> None:
    if config.node_spec.num_devices < 2:
        pytest.skip("needs two devices")


def test_killed_worker_restarts_and_a_moved_node_restarts_with_missing_rows_only(tmp_path, tiny_s):
    config = make_config("cpu", home=str(tmp_path / "home"), tick_s=0.1)
    two_devices(config)
    rows = 40
    with Runner(config) as runner:
        runner.start()
        runner.register(RegisterApplication(app_run_id="r", application=long_app(tiny_s, rows, devices=[0])),
                        submit_all=True)
        checkpoint = NodeCheckpoint(config.home / "runs" / "r" / "gen")

        def done() -> int:
            return runner.node_status("r", "gen").rows_done

        # 1. kill -9 the engine worker once it has finished a few rows
        wait_until(lambda: done() >= 3, what="first rows")
        first_run = runner.store.node_runs("r", "gen")[0]
        pid = first_run.pids[0][0]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: runner.node_status("r", "gen").crashes == 1, what="the crash to be noticed")
        part_before = checkpoint.part_path(1, 0).read_bytes()
        wait_until(lambda: runner.store.node_runs("r", "gen")[0].pids and len(runner.store.node_runs("r", "gen")[0].pids) == 2,
                   what="the replacement worker")
        assert checkpoint.part_path(1, 0, 1).parent == checkpoint.dir

        # 2. a plan that moves the running node to device 1: stopped, restarted there with the
        #    rows that have no result (forced here: tiny models never pay a reload)
        wait_until(lambda: runner.node_status("r", "gen").state == "running" and done() >= len(part_before.splitlines()) + 2,
                   what="the restarted engine to make progress")
        current = runner.view("r").plans[-1].schedule
        stage = current.stages[0]
        moved = stage.model_copy(update={"nodes": [stage.nodes[0].model_copy(update={
            "devices": [1], "replicas": [[1]], "action": "restart"})]})
        version = runner.apply_plan("r", current.model_copy(update={"stages": [moved]}), "test: move to device 1")
        wait_until(lambda: len(runner.store.node_runs("r", "gen")) == 2, what="the move")
        done_at_move = checkpoint.done_ids()
        status = runner.wait("r", timeout=TIMEOUT)
        assert status.state == "success", status.error

        node_runs = runner.store.node_runs("r", "gen")
        assert [(r.device_ids, r.state) for r in node_runs] == [([0], "stopped"), ([1], "finished")]
        job = json.loads((checkpoint.dir / "worker-0002-00-00" / "job.json").read_text())
        assert {row["row_id"] for row in job["rows"]}.isdisjoint(done_at_move)  # only missing rows
        assert checkpoint.part_path(1, 0).read_bytes() == part_before  # the killed worker's rows kept as they were
        assert_each_row_once(checkpoint, runner.node_status("r", "gen").result_uri, rows)
        kinds = [e.kind for e in runner.store.events(node_runs[0].id)]
        assert "crashed" in kinds and "stop_requested" in kinds
        view = runner.view("r")
        assert version in {p.version for p in view.plans}
        assert [s.nodes[0].devices for s in view.stages] == [[0], [1]]  # a new stage when the set changed
        assert all(s.end is not None for s in view.stages)
        assert runner.health().devices_busy == []


def run_cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "samullm", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_runner_killed_mid_run_resumes_from_the_store(tmp_path, tiny_s):
    rows = 30
    app_file = tmp_path / "app.yaml"
    app_file.write_text(yaml.safe_dump(long_app(tiny_s, rows)))
    home = tmp_path / "home"
    args = ("run", str(app_file), "--home", str(home), "--run-id", "resume-me", "--quiet")
    checkpoint = NodeCheckpoint(home / "runs" / "resume-me" / "gen")
    first = run_cli(*args)
    try:
        # Killed as soon as its worker has written a row (the worker writes the node's result
        # file step by step; the store lags behind it): most rows are left for the second runner.
        # (Killed later, the orphan worker could finish every row in the second it takes to see
        # its parent gone, and nothing would be left to resume.)
        wait_until(lambda: checkpoint.dir.exists() and len(checkpoint.results()) >= 1 or first.poll() is not None,
                   what="a row before the kill", poll=0.1)
        assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    before = checkpoint.results()
    assert before, "no row was finished before the kill"
    assert len(before) < rows // 2, f"{len(before)} of {rows} rows done before the kill: too few left to resume"
    # Started again at once: the orphan worker may still be stopping; the runner waits for it.
    second = run_cli(*args)
    out, err = second.communicate(timeout=TIMEOUT)
    assert second.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["state"] == "success" and summary["nodes"]["gen"]["rows"] == rows
    after = checkpoint.results()
    assert all(after[r] == before[r] for r in before)  # nothing done before was redone or changed
    store = Store(f"sqlite:///{home / 'store.db'}")
    try:
        runs = store.node_runs("resume-me", "gen")
        states = [(r.id, r.state, r.error) for r in runs]
        # The killed launch is closed as interrupted; a launch of the second runner finished it.
        assert runs[0].state == "interrupted" and runs[-1].state == "finished", states
        column_uri = store.get_node("resume-me", "gen").result_uri
    finally:
        store.close()
    assert_each_row_once(checkpoint, column_uri, rows)


def test_two_runs_at_once_share_the_devices_without_double_booking(tmp_path, tiny_s, tiny_model_dir):
    config = make_config("cpu", home=str(tmp_path / "home"), tick_s=0.1)
    two_devices(config)

    def app(model, name):
        return {"name": name, "dataset": {"rows": [{"q": f"{name} {i}"} for i in range(6)]},
                "nodes": [{"name": "n", "model": str(model), "prompt": "{{ q }}", "plan": {"tp": 1, "dp": 1},
                           "sampling": {"max_tokens": 40, "ignore_eos": True}, "engine": {"max_model_len": 128}}]}

    with Runner(config) as runner:
        runner.start()
        runner.register(RegisterApplication(app_run_id="one", application=app(tiny_s, "one")), submit_all=True)
        runner.register(RegisterApplication(app_run_id="two", application=app(tiny_model_dir("tiny-m"), "two")),
                        submit_all=True)
        assert runner.wait("one", timeout=TIMEOUT).state == "success"
        assert runner.wait("two", timeout=TIMEOUT).state == "success"
        runs = runner.store.node_runs("one") + runner.store.node_runs("two")
        overlaps = 0
        for a in runs:
            for b in runs:
                if a.id < b.id and a.started_at < b.ended_at and b.started_at < a.ended_at:
                    overlaps += 1
                    assert set(a.device_ids).isdisjoint(b.device_ids), (a.device_ids, b.device_ids)
        assert overlaps  # one engine per device (pinned TP1): the union plan runs both at once
        reasons = [p.reason for p in runner.store.plans("one")]
        assert reasons[:2] == ["initial plan", "run two joined"]


def test_a_dp_node_records_its_replicas_run_seconds_for_the_planner(tmp_path, tiny_s):
    """The node ends with its slowest replica: the runner stores every replica's run seconds, and
    the planner's coster stretches DP plans by the slowest over the mean."""
    from samullm.runtime import feedback

    config = make_config("cpu", home=str(tmp_path / "home"), tick_s=0.1)
    two_devices(config)
    app = {"name": "dp", "dataset": {"rows": [{"q": f"row {i}"} for i in range(8)]},
           "nodes": [{"name": "n", "model": str(tiny_s), "prompt": "{{ q }}", "plan": {"tp": 1, "dp": 2},
                      "sampling": {"max_tokens": 30, "ignore_eos": True}, "engine": {"max_model_len": 128}}]}
    with Runner(config) as runner:
        runner.start()
        runner.register(RegisterApplication(app_run_id="dp", application=app), submit_all=True)
        assert runner.wait("dp", timeout=TIMEOUT).state == "success"
        stats = runner.store.observations(str(tiny_s), "replica_balance")
        assert len(stats) == 1 and stats[0].payload["dp"] == 2
        assert all(e > 0 for e in stats[0].payload["elapsed_s"]) and len(stats[0].payload["elapsed_s"]) == 2
        slowdown = feedback.Observations(runner.store, stats[0].device).replica_slowdowns()[2]
        assert slowdown == pytest.approx(feedback.slowest_over_mean(stats[0].payload)) and slowdown >= 1.0


def test_a_node_of_the_same_model_takes_over_the_engine_the_last_one_left(tmp_path, tiny_s):
    """A chain of two nodes of one model on the same device: the second runs on the engine the
    first left loaded (one worker, one load); the engine exits once no plan wants it."""
    import psutil

    config = make_config("cpu", home=str(tmp_path / "home"), tick_s=0.1)
    node = {"model": str(tiny_s), "plan": {"tp": 1, "devices": [0]}, "engine": {"max_model_len": 128},
            "sampling": {"max_tokens": 6, "ignore_eos": True}}
    app = {"name": "chain", "dataset": {"rows": [{"q": f"row {i}"} for i in range(5)]},
           "nodes": [dict(node, name="first", prompt="{{ q }}"),
                     dict(node, name="second", prompt="{{ q }} then {{ first }}")]}
    with Runner(config) as runner:
        runner.start()
        runner.register(RegisterApplication(app_run_id="chain", application=app), submit_all=True)
        assert runner.wait("chain", timeout=TIMEOUT).state == "success"
        first, second = (runner.store.node_runs("chain", name) for name in ("first", "second"))
        assert len(first) == len(second) == 1
        first, second = first[0], second[0]
        assert first.load_seconds > 0 and second.load_seconds == 0.0
        assert [p[0] for p in second.pids] == [p[0] for p in first.pids]  # the same worker process
        kinds = [e.kind for e in runner.store.events(second.id)]
        assert "took_over" in kinds and "loaded" not in kinds
        assert [e.payload["engine_of"] for e in runner.store.events(second.id) if e.kind == "took_over"] == ["first"]
        assert [o.payload["seconds"] > 0 for o in runner.store.observations(str(tiny_s), "load")] == [True]
        column = read_column(runner.node_status("chain", "second").result_uri)
        assert [r["row_id"] for r in column] == [str(i) for i in range(5)]
        assert all(r["output_tokens"] == 6 for r in column)
        # Nothing wants the engine once the run is over: it exits and gives its device back.
        wait_until(lambda: not runner.idle, timeout=120, what="the idle engine to exit")
        assert not psutil.pid_exists(first.pids[0][0]) or psutil.Process(first.pids[0][0]).status() == psutil.STATUS_ZOMBIE
        assert runner.pool.free() == set(config.devices.device_ids)


def test_an_engine_waits_for_the_node_a_later_stage_runs_on_it(tmp_path, tiny_s, tiny_model_dir):
    """A judge of the ensemble member a's model, planned on a's device once b is done: a's engine
    waits through b's stage (its device is not needed meanwhile) and the judge takes it over."""
    config = make_config("cpu", home=str(tmp_path / "home"), tick_s=0.1)
    two_devices(config)
    engine = {"max_model_len": 256, "max_num_seqs": 2}
    rows = [{"q": f"question {i}"} for i in range(12)]
    app = {"name": "judged", "dataset": {"rows": rows}, "nodes": [
        {"name": "a", "model": str(tiny_s), "prompt": "{{ q }}", "plan": {"tp": 1, "devices": [0]}, "engine": engine,
         "sampling": {"max_tokens": 4, "ignore_eos": True}},
        {"name": "b", "model": str(tiny_model_dir("tiny-m")), "prompt": "{{ q }}", "plan": {"tp": 1, "devices": [1]},
         "engine": {"max_model_len": 256, "max_num_seqs": 1},  # one row at a time: b ends well after a
         "sampling": {"max_tokens": 240, "ignore_eos": True}},
        {"name": "judge", "model": str(tiny_s), "prompt": "{{ q }} 1: {{ a }} 2: {{ b }}",
         "plan": {"tp": 1, "devices": [0]}, "engine": engine, "sampling": {"max_tokens": 4, "ignore_eos": True}},
    ]}
    with Runner(config) as runner:
        runner.start()
        runner.register(RegisterApplication(app_run_id="judged", application=app), submit_all=True)
        assert runner.wait("judged", timeout=TIMEOUT).state == "success"
        a, b, judge = (runner.store.node_runs("judged", name)[0] for name in ("a", "b", "judge"))
        assert a.ended_at < b.ended_at  # a's engine had to wait for b
        assert judge.load_seconds == 0.0 and [p[0] for p in judge.pids] == [p[0] for p in a.pids]
        assert [e.payload["engine_of"] for e in runner.store.events(judge.id) if e.kind == "took_over"] == ["a"]
        assert len(read_column(runner.node_status("judged", "judge").result_uri)) == 12
        wait_until(lambda: not runner.idle, timeout=120, what="the idle engine to exit")
