"""End to end on SQLite: real Airflow processes, a real `samullm runner`, real vLLM CPU engines.

One Airflow + runner for the whole module. The ensemble DAG (two tiny models answer 24
questions, a judge reads both answers) and the bad-input DAGs are triggered together; then:
the run succeeds and every row has an output; the plugin's API returns the plan and the actual
stages (behind Airflow's auth); task logs carry the node's progress; clearing a finished LLM task
reruns it without recomputing its rows; every bad input fails its task with a clear message; the
plugin's pages render in headless Chromium (screenshots kept under artifacts/airflow/).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

from samullm.airflow_env import free_port  # noqa: E402
from samullm.airflow_rest import AirflowApiError, quote  # noqa: E402
from samullm.results import read_column  # noqa: E402
from tests.airflow.stack import REPO, make_dags_folder, start_stack  # noqa: E402

ENSEMBLE = "samullm_ensemble"
ROWS = 24  # dags/data/questions.jsonl
MAX_TOKENS = 8
BAD = {
    "samullm_bad_model": ("answer", "unknown model '/nonexistent/model'"),
    "samullm_too_big": ("answer", "fits on no device set of this node"),
    "samullm_missing_column": ("answer", "reads ['topic'], which is neither a column"),
    "samullm_missing_upstream": ("second", "add `first >> second`"),
    "samullm_runner_down": ("answer", "start one with `samullm runner"),
    "samullm_wrong_secret": ("answer", "wrong runner secret"),
}
ARTIFACTS = REPO / "artifacts" / "airflow"
SECOND = "second ensemble run"  # a second run of the ensemble DAG, at the same time as the first


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    dags = make_dags_folder(base / "dags", ["samullm_ensemble.py"], ["samullm_bad_inputs.py"])
    closed_port = free_port()  # nothing listens there
    env = {"AIRFLOW_CONN_SAMULLM_DOWN": json.dumps(
        {"conn_type": "samullm", "host": f"http://127.0.0.1:{closed_port}", "password": "x"})}
    s = start_stack(base, dags, extra_env=env)
    # The wrong-secret connection points at the real runner: only known now; the env of running
    # processes cannot change, so it is a connection in the metadata database instead.
    s.airflow.airflow("connections", "add", "samullm_wrong_secret", "--conn-json",
                      json.dumps({"conn_type": "samullm", "host": s.runner.url, "password": "not-the-secret"}))
    print(f"Airflow + runner up in {s.started_in:.1f} s")
    yield s
    keep = ARTIFACTS / "logs"
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(s.airflow.log_dir, keep / "components", dirs_exist_ok=True)
    if s.runner.process is not None and s.runner.process.log_path.exists():
        shutil.copy(s.runner.process.log_path, keep / "runner.log")
    s.stop()


@pytest.fixture(scope="module")
def runs(stack):
    """Trigger the ensemble and every bad-input DAG at once; wait for all of them."""
    rest = stack.rest
    t0 = time.monotonic()
    run_ids = {}
    for key in [ENSEMBLE, SECOND, *BAD]:
        dag_id = ENSEMBLE if key == SECOND else key
        rest.wait_for_dag(dag_id)
        rest.unpause(dag_id)
        conf = {"max_tokens": MAX_TOKENS} if dag_id == ENSEMBLE else {}
        run_ids[key] = rest.trigger(dag_id, conf)["dag_run_id"]
    final = {}
    for key, run_id in run_ids.items():
        try:
            final[key] = rest.wait_for_run(ENSEMBLE if key == SECOND else key, run_id, timeout=900, poll=2.0)
        except TimeoutError:
            print(stack.diagnostics())
            raise
    print(f"all runs finished {time.monotonic() - t0:.1f} s after triggering")
    return {key: (run_ids[key], final[key]) for key in run_ids}


def ensemble_run_id(runs) -> str:
    return runs[ENSEMBLE][0]


def test_ensemble_run_succeeds_and_every_row_has_an_output(stack, runs):
    run_id, run = runs[ENSEMBLE]
    tis = {t["task_id"]: t for t in stack.rest.task_instances(ENSEMBLE, run_id)}
    if run["state"] != "success":
        logs = {t: stack.rest.task_log(ENSEMBLE, run_id, t, max(1, ti["try_number"]))[-3000:] for t, ti in tis.items()}
        pytest.fail(f"run {run['state']}: {json.dumps({t: ti['state'] for t, ti in tis.items()})}\n{logs}\n{stack.diagnostics()}")
    assert {t: ti["state"] for t, ti in tis.items()} == {"answer_a": "success", "answer_b": "success", "judge": "success"}
    for task_id in tis:
        manifest = stack.rest.xcom(ENSEMBLE, run_id, task_id)
        assert manifest["node"] == task_id and manifest["rows"] == ROWS and manifest["rows_failed"] == 0
        column = read_column(manifest["result_uri"])
        assert len(column) == ROWS and len({r["row_id"] for r in column}) == ROWS
        assert all(r["finish_reason"] != "error" and r["text"] for r in column)
        assert all(r["output_tokens"] == MAX_TOKENS for r in column)  # ignore_eos: exactly max_tokens
        assert manifest["output_tokens"] == ROWS * MAX_TOKENS
        assert manifest["plan"]["devices"], manifest


def test_plugin_api_returns_plan_and_actual_stages(stack, runs):
    run_id = ensemble_run_id(runs)
    chart = stack.rest.get(f"/samullm/api/runs/{ENSEMBLE}/{quote(run_id)}")
    assert chart["app"]["state"] == "success"
    assert chart["stages_planned"] >= 1 and chart["stages_actual"] >= 1
    assert chart["plans"][0]["version"] == 1 and chart["plans"][0]["makespan"] > 0
    rows = {r["node"]: r for r in chart["rows"]}
    assert set(rows) == {"answer_a", "answer_b", "judge"}
    for row in rows.values():
        assert row["state"] == "success" and row["rows_done"] == ROWS and row["progress"] == 1.0
        assert row["planned"] and row["actual"]
    # The judge reads both answers: it starts after both ended, in the plan and in reality.
    assert min(b["start"] for b in rows["judge"]["actual"]) >= max(
        b["end"] for n in ("answer_a", "answer_b") for b in rows[n]["actual"]) - 1e-6
    node = stack.rest.get(f"/samullm/api/runs/{ENSEMBLE}/{quote(run_id)}/tasks/judge")
    assert [r["node"] for r in node["rows"]] == ["judge"] and node["rows"][0]["plan"]["devices"]


def test_two_runs_at_once_never_double_book_a_device(stack, runs):
    """Both ensemble runs ran at the same time on the one runner: no device served two node runs
    at once (stages placed on the runner's clock through each run's creation time)."""
    import datetime as dt

    busy: dict[int, list[tuple[float, float, str]]] = {}
    for key in (ENSEMBLE, SECOND):
        run_id, run = runs[key]
        assert run["state"] == "success", key
        chart = stack.rest.get(f"/samullm/api/runs/{ENSEMBLE}/{quote(run_id)}")
        created = dt.datetime.fromisoformat(chart["app"]["created_at"]).timestamp()
        for row in chart["rows"]:
            for bar in row["actual"]:
                for device in bar["devices"]:
                    busy.setdefault(device, []).append((created + bar["start"], created + bar["end"], f"{key}:{row['node']}"))
    overlaps = []
    for device, spans in busy.items():
        for i, (s1, e1, who1) in enumerate(spans):
            for s2, e2, who2 in spans[i + 1:]:
                if who1 != who2 and min(e1, e2) - max(s1, s2) > 0.05:
                    overlaps.append((device, who1, who2, round(min(e1, e2) - max(s1, s2), 2)))
    assert not overlaps, overlaps
    assert {k for spans in busy.values() for *_, k in spans} >= {f"{key}:{n}" for key in (ENSEMBLE, SECOND) for n in ("answer_a", "answer_b", "judge")}


def test_plugin_api_is_behind_airflow_auth(stack, runs):
    url = f"{stack.airflow.base_url}/samullm/api/runs/{ENSEMBLE}/{quote(ensemble_run_id(runs))}"
    with pytest.raises(urllib.error.HTTPError) as no_token:
        urllib.request.urlopen(url, timeout=10)
    assert no_token.value.code == 401
    bad = urllib.request.Request(url, headers={"Authorization": "Bearer not-a-jwt"})
    with pytest.raises(urllib.error.HTTPError) as bad_token:
        urllib.request.urlopen(bad, timeout=10)
    assert bad_token.value.code in (401, 403)


def test_task_log_shows_progress_and_state_store_the_manifest(stack, runs):
    run_id = ensemble_run_id(runs)
    ti = next(t for t in stack.rest.task_instances(ENSEMBLE, run_id) if t["task_id"] == "judge")
    log = stack.rest.task_log(ENSEMBLE, run_id, "judge", ti["try_number"])
    assert "SamuLLM run" in log and "registered with the runner" in log
    assert f"SamuLLM node judge" in log and f"success, {ROWS}/{ROWS} rows (100%)" in log
    state = stack.rest.get(f"/api/v2/dags/{ENSEMBLE}/dagRuns/{quote(run_id)}/taskInstances/judge/state-store/samullm")
    value = state["value"] if isinstance(state["value"], dict) else json.loads(state["value"])
    assert value["rows"] == ROWS and value["result_uri"].endswith("judge.jsonl")


def test_clearing_a_finished_task_reruns_it_without_recomputing(stack, runs):
    rest = stack.rest
    run_id = ensemble_run_id(runs)
    manifest = rest.xcom(ENSEMBLE, run_id, "answer_a")
    column = Path(manifest["result_uri"])
    before = (column.read_bytes(), column.stat().st_mtime_ns)
    parts = sorted(p.name for p in column.parent.parent.rglob("part-*.jsonl")) if column.exists() else []
    rest.clear_task(ENSEMBLE, run_id, "answer_a")
    run = rest.wait_for_run(ENSEMBLE, run_id, timeout=300, poll=1.0)
    assert run["state"] == "success"
    ti = next(t for t in rest.task_instances(ENSEMBLE, run_id) if t["task_id"] == "answer_a")
    assert ti["state"] == "success" and ti["try_number"] >= 2
    log = rest.task_log(ENSEMBLE, run_id, "answer_a", ti["try_number"])
    assert "already finished" in log and "nothing recomputed" in log
    assert "Pausing task as DEFERRED" not in log  # no engine, no waiting
    assert (column.read_bytes(), column.stat().st_mtime_ns) == before
    assert sorted(p.name for p in column.parent.parent.rglob("part-*.jsonl")) == parts
    again = rest.xcom(ENSEMBLE, run_id, "answer_a")
    assert again["rows"] == manifest["rows"] and again["finished_at"] == manifest["finished_at"]


@pytest.mark.parametrize("dag_id", sorted(BAD))
def test_bad_input_fails_the_task_with_a_clear_message(stack, runs, dag_id):
    task_id, message = BAD[dag_id]
    run_id, run = runs[dag_id]
    assert run["state"] == "failed"
    ti = next(t for t in stack.rest.task_instances(dag_id, run_id) if t["task_id"] == task_id)
    assert ti["state"] == "failed"
    log = stack.rest.task_log(dag_id, run_id, task_id, max(1, ti["try_number"]))
    assert message in log, log[-2000:]


# --- the pages, in headless Chromium ------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture(scope="module")
def page(stack):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (make test installs it with apt)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1000})
        base = stack.airflow.base_url
        pg.goto(f"{base}/")
        pg.fill("input[name=username]", stack.airflow.username)
        pg.fill("input[name=password]", stack.airflow.password)
        pg.click("button:has-text('Sign in')")
        pg.wait_for_url(lambda u: "/auth/login" not in u, timeout=30000)
        yield pg
        browser.close()


def test_run_page_draws_planned_and_actual_stages(stack, runs, page):
    run_id = ensemble_run_id(runs)
    page.goto(f"{stack.airflow.base_url}/dags/{ENSEMBLE}/runs/{quote(run_id)}/plugin/samullm-stages")
    page.wait_for_selector("#samullm-gantt rect[data-kind=actual]", timeout=60000)
    assert page.get_attribute("#samullm-app-state", "data-state") == "success"
    for node in ("answer_a", "answer_b", "judge"):
        assert page.locator(f"#samullm-gantt rect[data-kind=planned][data-node={node}]").count() >= 1
        assert page.locator(f"#samullm-gantt rect[data-kind=actual][data-node={node}]").count() >= 1
        row = page.locator(f"#samullm-nodes tr[data-node={node}]")
        assert row.get_attribute("data-state") == "success"
        assert f"{ROWS}/{ROWS}" in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "run_stages.png"), full_page=True)


def test_task_instance_page_shows_the_node(stack, runs, page):
    run_id = ensemble_run_id(runs)
    page.goto(f"{stack.airflow.base_url}/dags/{ENSEMBLE}/runs/{quote(run_id)}/tasks/judge/plugin/samullm-node")
    page.wait_for_selector("#samullm-node tr[data-fact=plan]", timeout=60000)
    assert "TP" in page.inner_text("#samullm-node tr[data-fact=plan]")
    assert f"{ROWS}/{ROWS}" in page.inner_text("#samullm-node tr[data-fact=rows]")
    page.screenshot(path=str(ARTIFACTS / "task_node.png"), full_page=True)


def test_dry_run_page_predicts_the_plan(stack, page):
    page.goto(f"{stack.airflow.base_url}/dags/{ENSEMBLE}/plugin/samullm-dry-run")
    page.wait_for_selector("#samullm-dry-run #samullm-makespan, #samullm-dry-run #samullm-error", timeout=120000)
    assert page.locator("#samullm-error").count() == 0, page.inner_text("#samullm-dry-run")
    assert page.locator("#samullm-gantt rect[data-kind=planned]").count() >= 3
    page.screenshot(path=str(ARTIFACTS / "dag_dry_run.png"), full_page=True)


def test_run_page_of_a_failed_registration_says_why(stack, runs, page):
    run_id = runs["samullm_too_big"][0]
    page.goto(f"{stack.airflow.base_url}/dags/samullm_too_big/runs/{quote(run_id)}/plugin/samullm-stages")
    page.wait_for_selector("#samullm-error", timeout=60000)
    assert "registration failed (see the SamuLLM tasks' logs)" in page.inner_text("#samullm-error")
