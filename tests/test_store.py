"""The store keeps every row once, numbers plans and stages, and survives reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from samullm.store import Store


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def test_app_run_registration_is_idempotent(store: Store) -> None:
    _, created = store.register_app_run("dag/run1", "dag", {"nodes": []}, {"name": "cpu"})
    _, again = store.register_app_run("dag/run1", "dag", {"nodes": ["x"]}, {"name": "cpu"})
    assert created and not again
    assert store.get_app_run("dag/run1").graph == {"nodes": []}


def test_rows_are_recorded_once(store: Store) -> None:
    store.register_app_run("r", "app", {}, {})
    added = store.record_rows("r", "a", [{"row_id": 1, "output_tokens": 5}, {"row_id": 2}], None)
    again = store.record_rows("r", "a", [{"row_id": 2, "output_tokens": 9}, {"row_id": 3}], None)
    assert (added, again) == (2, 1)
    assert store.rows_done("r", "a") == {"1", "2", "3"}
    counts = store.row_counts("r")["a"]
    assert counts["rows"] == 3 and counts["output_tokens"] == 5


def test_failed_rows_are_counted_and_excluded_from_lengths(store: Store) -> None:
    store.register_app_run("r", "app", {}, {})
    store.record_rows(
        "r",
        "a",
        [
            {"row_id": "x", "output_tokens": 7, "finish_reason": "length"},
            {"row_id": "y", "error": "prompt longer than max_model_len"},
        ],
        None,
    )
    assert store.row_counts("r")["a"]["failed_rows"] == 1
    assert store.output_lengths("r", "a") == [(7, "length")]


def test_plan_versions_and_stages_are_numbered(store: Store) -> None:
    store.register_app_run("r", "app", {}, {})
    assert store.add_plan("r", {"stages": []}, "initial", 0.1) == 1
    assert store.add_plan("r", {"stages": []}, "node a finished", 0.1) == 2
    assert store.open_stage("r", 1, [{"node": "a"}]) == 0
    assert store.open_stage("r", 2, [{"node": "b"}]) == 1
    stages = store.stages("r")
    assert stages[0].ended_at is not None and stages[1].ended_at is None
    store.close_stages("r")
    assert all(stage.ended_at is not None for stage in store.stages("r"))


def test_node_run_attempts_count_up_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    first = Store(url)
    first.register_app_run("r", "app", {}, {})
    one = first.start_node_run("r", "a", tp=1, dp=1, device_ids=[0], rows_total=4, rows_done=0)
    first.update_node_run(one.id, state="preempted", rows_done=2)
    first.add_event(one.id, "progress", {"rows_done": 2})
    first.close()
    reopened = Store(url)
    two = reopened.start_node_run("r", "a", tp=2, dp=1, device_ids=[0, 1], rows_total=4, rows_done=2)
    assert (one.attempt, two.attempt) == (1, 2)
    assert [run.state for run in reopened.node_runs("r", "a")] == ["preempted", "starting"]
    assert reopened.events(one.id)[0].payload == {"rows_done": 2}
    reopened.close()


def test_observations_filter_by_model_device_and_tp(store: Store) -> None:
    store.add_observation("m", "latency", {"iterations": []}, device="cpu", tp=1)
    store.add_observation("m", "latency", {"iterations": [1]}, device="cpu", tp=2)
    store.add_observation("m", "output_lengths", {"lengths": [3]})
    assert len(store.observations("m", "latency")) == 2
    assert store.observations("m", "latency", tp=2)[0].payload == {"iterations": [1]}


def _open_store(url: str, start_at: float) -> str:
    import time as _time

    from samullm.store import Store

    _time.sleep(max(0.0, start_at - _time.time()))
    store = Store(url)
    store.close()
    return "ok"


def test_many_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """The runner, the Airflow plugin and a client may create the same new store together:
    none of them may fail with "table ... already exists"."""
    import multiprocessing
    import time as _time

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        for attempt in range(4):
            url = f"sqlite:///{tmp_path / f'store{attempt}.db'}"
            start_at = _time.time() + 1.5  # after the workers have imported SQLAlchemy
            results = pool.starmap(_open_store, [(url, start_at)] * 6)
            assert results == ["ok"] * 6
