"""The runner without engines: registration checks and plans, several runs planned together,
submission and cancel bookkeeping, and resuming from the store after a runner died (orphan
workers waited for and killed, rows found in part files recorded)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from samullm.api import RegisterApplication, SubmitNode
from samullm.errors import UserInputError
from samullm.results import NodeCheckpoint, read_column
from samullm.runner import Runner, RunnerBusy
from samullm.runtime.config import make_config
from samullm.worker.messages import RowResult
from samullm.worker.results import ResultWriter


def app_dict(model, rows=4, name="app", **node_extra):
    return {
        "name": name,
        "dataset": {"rows": [{"q": f"question {i}"} for i in range(rows)]},
        "nodes": [
            {"name": "a", "model": str(model), "prompt": "Q: {{ q }}", "sampling": {"max_tokens": 4},
             "engine": {"max_model_len": 256}, **node_extra},
            {"name": "b", "model": str(model), "prompt": "{{ q }} {{ a }}", "sampling": {"max_tokens": 4},
             "engine": {"max_model_len": 256}},
        ],
    }


@pytest.fixture()
def runner(tmp_path):
    r = Runner(make_config("cpu", home=str(tmp_path / "home")))
    r.start(loop=False)  # no loop: nothing is launched behind the test's back
    yield r
    r.shutdown()


def register(runner, app_run_id, app, **kw):
    return runner.register(RegisterApplication(app_run_id=app_run_id, application=app, **kw))


def test_registration_plans_once_and_is_idempotent(runner, tiny_s):
    status = register(runner, "dag.r1", app_dict(tiny_s), labels={"dag_id": "dag"})
    assert status.state == "running" and status.labels == {"dag_id": "dag"}
    again = register(runner, "dag.r1", app_dict(tiny_s, rows=1))
    assert again.created_at == status.created_at
    view = runner.view("dag.r1")
    assert [p.version for p in view.plans] == [1] and view.plans[0].reason == "initial plan"
    assert {n.node: (n.state, n.rows_total, n.submitted) for n in view.nodes} == {
        "a": ("pending", 4, False), "b": ("pending", 4, False)}
    first = view.plans[0].schedule.stages[0]
    assert [n.node for n in first.nodes] == ["a"]  # b reads a: it cannot start before


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "/nonexistent/model"}, "unknown model"),
        ({"prompt": "{{ missing }}"}, "missing"),
        ({"plan": {"tp": 8}}, "pinned plan TP8"),
        ({"engine": {"extra": {"swap_space": 4}}}, "swap_space"),
        ({"engine": {"max_model_len": 100000}}, "max_model_len"),
    ],
)
def test_bad_input_fails_registration_and_nothing_is_stored(runner, tiny_s, change, message):
    if "plan" in change and runner.config.node_spec.num_devices >= 8:
        pytest.skip("this machine has enough devices for TP8")
    app = app_dict(tiny_s)
    app["nodes"][0].update(change)
    with pytest.raises(UserInputError, match=message):
        register(runner, "bad.r1", app)
    assert runner.store.get_app_run("bad.r1") is None
    assert runner.apps_status() == []


def test_a_model_directory_without_config_is_refused(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no config.json"):
        register(runner, "bad.r2", app_dict(tmp_path / "empty"))


def test_unknown_method_is_refused(runner, tiny_s):
    with pytest.raises(UserInputError, match="unknown baseline"):
        register(runner, "bad.r3", app_dict(tiny_s), method="nope")


def test_two_runs_are_planned_together_on_disjoint_devices(runner, tiny_s, tiny_model_dir):
    if runner.config.node_spec.num_devices < 2:
        pytest.skip("needs two devices")
    register(runner, "one", app_dict(tiny_s, name="one"))
    register(runner, "two", app_dict(tiny_model_dir("tiny-m"), name="two"))
    one, two = runner.view("one"), runner.view("two")
    assert [(p.version, p.reason) for p in one.plans] == [(1, "initial plan"), (2, "run two joined")]
    assert [p.version for p in two.plans] == [1] and "one" in two.plans[0].reason
    s1, s2 = one.plans[-1].schedule.stages[0], two.plans[0].schedule.stages[0]
    used1 = {d for n in s1.nodes for d in n.devices}
    used2 = {d for n in s2.nodes for d in n.devices}
    # both runs' first nodes are runnable: whatever the plan, the two never share a device
    if s1.start == s2.start == 0.0:
        assert used1.isdisjoint(used2)
    assert any("planned together" in note for note in two.plans[0].schedule.notes)


def test_submit_and_cancel_bookkeeping(runner, tiny_s):
    register(runner, "r", app_dict(tiny_s), context={"tag": "x"})
    with pytest.raises(KeyError):
        runner.submit("r", "nope")
    with pytest.raises(KeyError):
        runner.submit("missing-run", "a")
    status = runner.submit("r", "b", SubmitNode(context={"tag": "y", "other": 1}))
    assert (status.state, status.submitted) == ("waiting", True)
    assert runner.store.get_node("r", "b").context == {"tag": "y"}  # only the run's context keys
    cancelled = runner.cancel("r")
    assert cancelled.state == "cancelled"
    assert {n.node: n.state for n in runner.node_statuses("r")} == {"a": "cancelled", "b": "cancelled"}


def test_a_node_of_an_ended_run_can_be_submitted_again_after_a_restart(tmp_path, tiny_s):
    config = make_config("cpu", home=str(tmp_path / "home"))
    with Runner(config) as first:
        first.start(loop=False)
        register(first, "r", app_dict(tiny_s))
        assert first.cancel("r").state == "cancelled"
    with Runner(config) as second:  # an Airflow retry of the task, after a runner restart
        second.start(loop=False)
        assert second.apps == {}  # ended runs are not resumed...
        status = second.submit("r", "a")  # ...but a retried node brings its run back
        assert (status.state, second.app_status("r").state) == ("waiting", "running")
        assert second.node_status("r", "b").state == "cancelled"


def test_a_second_runner_on_the_same_home_is_refused(runner):
    with pytest.raises(RunnerBusy, match="another SamuLLM runner"):
        Runner(runner.config)


def _sleeper() -> subprocess.Popen:
    """A process in its own session, like an engine worker left by a dead runner."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def test_resume_waits_for_orphans_and_records_rows_found_in_parts(tmp_path, tiny_s):
    config = make_config("cpu", home=str(tmp_path / "home"), orphan_grace_s=0.5)
    first = Runner(config)
    first.start(loop=False)
    register(first, "r", app_dict(tiny_s))
    first.submit("r", "a")
    # What a launch leaves when the runner dies: an open node run with its worker's pid, and
    # rows in the worker's part file the store never heard of.
    orphan = _sleeper()
    started = psutil.Process(orphan.pid).create_time()
    node_run = first.store.start_node_run("r", "a", 1, 1, [0], rows_total=4, rows_done=0)
    first.store.update_node_run(node_run.id, pids=[[orphan.pid, started]])
    checkpoint = NodeCheckpoint(config.home / "runs" / "r" / "a")
    writer = ResultWriter(checkpoint.part_path(1, 0))
    writer.write([RowResult(row_id=str(i), text="x", prompt_tokens=3, output_tokens=4, finish_reason="length",
                            finished_at=time.time()) for i in (0, 2)])
    writer.close()
    first.shutdown()

    second = Runner(config)
    t0 = time.monotonic()
    second.start(loop=False)
    try:
        assert orphan.wait(timeout=15) is not None  # killed after the grace period
        assert time.monotonic() - t0 >= 0.5
        runs = second.store.node_runs("r", "a")
        assert runs[0].state == "interrupted" and runs[0].ended_at is not None
        assert second.store.rows_done("r", "a") == {"0", "2"}
        status = second.node_status("r", "a")
        assert (status.state, status.rows_done) == ("waiting", 2)
        state = second._planner_state(second.apps["r"])
        assert state.done_rows == {"a": [0, 2]}
        assert state.observed.output_tokens["a"] == {0: 4, 2: 4}
        assert state.observed.output_lengths[str(tiny_s)].capped == [True, True]
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, 9)
        second.shutdown()


def _write_rows(checkpoint: NodeCheckpoint, rows: dict[str, str]) -> None:
    writer = ResultWriter(checkpoint.part_path(1, 0))
    writer.write([RowResult(row_id=r, text=t, prompt_tokens=3, output_tokens=2, finish_reason="stop",
                            finished_at=time.time()) for r, t in rows.items()])
    writer.close()


def test_nodes_without_rows_left_complete_without_engines(tmp_path, tiny_s):
    """Routed nodes the router sent nothing to, and a node whose every row was done before a
    restart: the planner sees them finished (no stage holds them); the runner completes them."""
    config = make_config("cpu", home=str(tmp_path / "home"))
    node = {"model": str(tiny_s), "sampling": {"max_tokens": 4}, "engine": {"max_model_len": 128}}
    app = {
        "name": "routed",
        "dataset": {"rows": [{"q": "a"}, {"q": "b"}]},
        "nodes": [
            {"name": "router", "prompt": "{{ q }}", **node},
            {"name": "x", "prompt": "{{ q }}", "route": {"router": "router", "equals": "x"}, **node},
            {"name": "y", "prompt": "{{ q }}", "route": {"router": "router", "equals": "y"}, **node},
            {"name": "solo", "prompt": "{{ q }}!", **node},
        ],
    }
    with Runner(config) as first:
        first.start(loop=False)
        register(first, "r", app)
        for name in ("router", "x", "y", "solo"):
            first.submit("r", name)
        # as if the router had finished with outputs routing nowhere, and every row of solo was
        # written by its worker just before the runner died
        _write_rows(NodeCheckpoint(config.home / "runs" / "r" / "router"), {"0": "zzz", "1": " Z "})
        _write_rows(NodeCheckpoint(config.home / "runs" / "r" / "solo"), {"0": "s0", "1": "s1"})
        first.store.update_node("r", "router", state="success")
    with Runner(config) as second:
        second.start(loop=False)
        second.tick()
        second.tick()  # the completions re-plan; nothing is left to launch
        states = {n.node: (n.state, n.rows_total, n.attempts) for n in second.node_statuses("r")}
        assert states == {"router": ("success", 2, 0), "x": ("success", 0, 0), "y": ("success", 0, 0),
                          "solo": ("success", 2, 0)}
        assert second.app_status("r").state == "success"
        assert read_column(second.node_status("r", "x").result_uri) == []
        assert [r["text"] for r in read_column(second.node_status("r", "solo").result_uri)] == ["s0", "s1"]
