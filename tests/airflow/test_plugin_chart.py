"""What the SamuLLM views draw, from hand-made runner data."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from plugins.samullm_chart import run_chart, schedule_chart
from samullm.api import (ActualStage, ActualStageNode, AppStatus, AppView, NodePlan, NodeStatus,
                         PlanVersion)
from samullm.schedule import Schedule, Stage, StageNode

REPO = Path(__file__).resolve().parents[2]


def stage_node(node, devices, action="start", done=(0, 10), finishes=False):
    return StageNode(node=node, model=f"m-{node}", tp=len(devices), dp=1, devices=devices, replicas=[devices],
                     action=action, requests_total=10, requests_done_before=done[0],
                     requests_done_after=done[1], finishes=finishes)


def schedule(stages):
    return Schedule(application="ens", node_spec="cpu", num_devices=2, method="samullm", stages=stages,
                    makespan=stages[-1].end)


# Plan v1 (made 0.5 s into the run): a and b side by side on one device each until a ends at 4 s,
# then b alone, then judge on both devices from 6 s to 9 s.
PLAN1 = schedule([
    Stage(index=0, nodes=[stage_node("a", [0], finishes=True), stage_node("b", [1], done=(0, 7))], start=0, end=4, ends_with="a"),
    Stage(index=1, nodes=[stage_node("b", [1], action="continue", done=(7, 10), finishes=True)], start=4, end=6, ends_with="b"),
    Stage(index=2, nodes=[stage_node("judge", [0, 1], finishes=True)], start=6, end=9, ends_with="judge"),
])
# Re-plan at 5 s: the judge alone, planned 0..2 s after the re-plan.
PLAN2 = schedule([Stage(index=0, nodes=[stage_node("judge", [0, 1], finishes=True)], start=0, end=2, ends_with="judge")])


def view(elapsed=7.0):
    nodes = [
        NodeStatus(app_run_id="d.r", node="a", model="m-a", state="success", rows_total=10, rows_done=10,
                   output_tokens=100, seconds_running=4.0, plan=NodePlan(tp=1, devices=[0])),
        NodeStatus(app_run_id="d.r", node="b", model="m-b", state="success", rows_total=10, rows_done=10),
        NodeStatus(app_run_id="d.r", node="judge", model="m-judge", state="running", rows_total=10, rows_done=4),
    ]
    stages = [
        ActualStage(index=0, plan_version=1, start=1.0, end=4.5,
                    nodes=[ActualStageNode(node="a", tp=1, devices=[0]), ActualStageNode(node="b", tp=1, devices=[1])]),
        ActualStage(index=1, plan_version=1, start=4.5, end=5.0, nodes=[ActualStageNode(node="b", tp=1, devices=[1])]),
        ActualStage(index=2, plan_version=2, start=5.2, end=None, nodes=[ActualStageNode(node="judge", tp=2, devices=[0, 1])]),
    ]
    plans = [PlanVersion(version=2, reason="b finished", made_at=5.0, planning_seconds=0.1, schedule=PLAN2),
             PlanVersion(version=1, reason="registered", made_at=0.5, planning_seconds=0.2, schedule=PLAN1)]
    app = AppStatus(app_run_id="d.r", name="ens", state="running", created_at=dt.datetime(2026, 1, 1))
    return AppView(app=app, plans=plans, stages=stages, nodes=nodes, elapsed=elapsed)


def test_planned_bars_are_on_the_runs_clock_and_actual_open_stage_ends_now():
    chart = run_chart(view())
    rows = {r["node"]: r for r in chart["rows"]}
    assert [(b["start"], b["end"]) for b in rows["b"]["planned"]] == [(0.5, 4.5), (4.5, 6.5)]
    assert [(b["start"], b["end"]) for b in rows["judge"]["planned"]] == [(6.5, 9.5)]
    assert [(b["start"], b["end"]) for b in rows["judge"]["replanned"]] == [(5.0, 7.0)]
    assert rows["a"]["replanned"] == []  # the latest plan no longer has `a`
    assert [(b["start"], b["end"], b["open"]) for b in rows["judge"]["actual"]] == [(5.2, 7.0, True)]
    assert [(b["start"], b["end"]) for b in rows["b"]["actual"]] == [(1.0, 4.5), (4.5, 5.0)]
    assert chart["stages_planned"] == 3 and chart["stages_actual"] == 3
    assert chart["span"] == 9.5
    assert rows["judge"]["progress"] == 0.4 and rows["a"]["tokens_per_second"] == 25.0
    assert [p["version"] for p in chart["plans"]] == [1, 2]


def test_dry_run_chart_has_planned_bars_only():
    chart = schedule_chart(PLAN1)
    assert [r["node"] for r in chart["rows"]] == ["a", "b", "judge"]
    assert chart["stages_planned"] == 3 and chart["makespan"] == 9
    assert all(r["actual"] == [] for r in chart["rows"])


def test_bundle_registers_every_react_app_of_the_plugin():
    pytest.importorskip("airflow")
    from plugins.samullm_plugin import BUNDLE, SamuLLMPlugin

    bundle = (REPO / "plugins" / "static" / "samullm.js").read_text()
    registered = set(re.findall(r'globalThis\["([^"]+)"\]\s*=', bundle))
    names = {app["name"] for app in SamuLLMPlugin.react_apps}
    assert names <= registered
    assert all(app["bundle_url"] == BUNDLE for app in SamuLLMPlugin.react_apps)
    assert {app["destination"] for app in SamuLLMPlugin.react_apps} == {"dag_run", "task_instance", "dag"}


def test_plugin_is_a_valid_airflow_plugin_with_its_api_mounted():
    pytest.importorskip("airflow")
    from airflow._shared.plugins_manager.plugins_manager import is_valid_plugin

    from plugins.samullm_plugin import SamuLLMPlugin

    assert is_valid_plugin(SamuLLMPlugin)
    (api,) = SamuLLMPlugin.fastapi_apps
    assert api["url_prefix"] == "/samullm"
    paths = {route.path for route in api["app"].routes}
    assert {"/api/runs/{dag_id}/{run_id}", "/api/runs/{dag_id}/{run_id}/tasks/{task_id}",
            "/api/dags/{dag_id}/dry-run", "/static/samullm.js"} <= paths


def test_plugins_folder_mount_loads_only_the_plugin_module():
    """plugins/ also works as Airflow's plugins folder (instead of the package's entry point):
    Airflow imports each .py file there as a top-level module; .airflowignore keeps that to the
    plugin module itself."""
    pytest.importorskip("airflow")
    import sys

    from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory

    plugins, errors = _load_plugins_from_plugin_directory(str(REPO / "plugins"))
    assert errors == {} and [p.name for p in plugins] == ["samullm"]
    assert not {"samullm_api", "samullm_chart", "samullm_dry_run", "__init__"} & set(sys.modules)
