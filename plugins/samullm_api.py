"""The SamuLLM plugin's FastAPI app, mounted by Airflow's api-server under /samullm.

Every data route is behind Airflow's own authentication and DAG permissions (a logged-in
browser's cookie or a REST token): the same rules as the DAG run and task pages it extends.

  GET /samullm/static/samullm.js                       the UI bundle (public: code, no data)
  GET /samullm/api/runs/{dag_id}/{run_id}              a run: plans, stages planned vs actual, nodes
  GET /samullm/api/runs/{dag_id}/{run_id}/tasks/{task} one node: plan, metrics, its bars
  GET /samullm/api/dags/{dag_id}/dry-run               the predicted plan of the DAG (nothing runs)

Run data comes from the runner (`samullm.client.RunnerClient` through the `samullm_default`
connection): it holds every active run's plan and progress, and answers for finished runs from
its store. A runner that is down gives a 503 that says how to start it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy import select

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.dag import DagModel

from plugins.samullm_chart import run_chart, schedule_chart
from samullm.api import app_run_id_for

STATIC = Path(__file__).parent / "static"
PREFIX = "/samullm"
CONN_ID = "samullm_default"
DRY_RUN_TIMEOUT = 120.0

app = FastAPI(title="SamuLLM", description="SamuLLM stages and nodes of Airflow DAG runs")

_run_access = [Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))]
_ti_access = [Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.TASK_INSTANCE))]
_dag_access = [Depends(requires_access_dag(method="GET"))]


def runner_endpoint():
    """The runner's address and secret from the Airflow connection, else the runner's defaults."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    from samullm_operators.hooks import default_endpoint, endpoint_from_connection

    try:
        return endpoint_from_connection(Connection.get_connection_from_secrets(CONN_ID))
    except AirflowNotFoundException:
        return default_endpoint()


def _runner(fn_name: str, *args: Any) -> Any:
    """Call the runner; its failures become HTTP errors with the runner's message."""
    from samullm_operators.runner_calls import RunnerBadInput, RunnerNotFound, RunnerUnreachable, call_runner

    endpoint = runner_endpoint()
    client = endpoint.client()
    try:
        return call_runner(endpoint, getattr(client, fn_name), *args)
    except RunnerNotFound as err:
        raise HTTPException(404, str(err)) from None
    except RunnerBadInput as err:
        raise HTTPException(400, str(err)) from None
    except RunnerUnreachable as err:
        raise HTTPException(503, str(err)) from None


def _view(dag_id: str, run_id: str):
    try:
        return _runner("view", app_run_id_for(dag_id, run_id))
    except HTTPException as err:
        if err.status_code != 404:
            raise
        raise HTTPException(404, f"SamuLLM has no run for {dag_id} / {run_id}: no SamuLLM task of it has registered "
                                 f"yet, or registration failed (see the SamuLLM tasks' logs). [{err.detail}]") from None


@app.get("/static/samullm.js", include_in_schema=False)
def bundle() -> FileResponse:
    return FileResponse(STATIC / "samullm.js", media_type="text/javascript",
                        headers={"Cache-Control": "no-cache"})


@app.get("/api/runs/{dag_id}/{run_id}", dependencies=_run_access)
def run_view(dag_id: str, run_id: str) -> dict[str, Any]:
    """Plans, stages planned vs actual, and every node's progress of one DAG run."""
    chart = run_chart(_view(dag_id, run_id))
    chart["dag_id"], chart["run_id"] = dag_id, run_id
    return chart


@app.get("/api/runs/{dag_id}/{run_id}/tasks/{task_id}", dependencies=_ti_access)
def task_view(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """One SamuLLM task's node: plan, metrics, planned and actual bars."""
    view = _view(dag_id, run_id)
    node = node_of_task(view.app.labels, task_id)
    chart = run_chart(view)
    rows = [r for r in chart["rows"] if r["node"] == node]
    if not rows:
        raise HTTPException(404, f"task {task_id!r} is not a SamuLLM node of this run (nodes: {[r['node'] for r in chart['rows']]})")
    chart["rows"] = rows
    chart["span"] = max([chart["elapsed"], *(b["end"] for k in ("planned", "replanned", "actual") for b in rows[0][k])])
    return chart


def node_of_task(labels: dict[str, str], task_id: str) -> str:
    """The node name a task registered under (labels carry the mapping), else the default rule."""
    from samullm_operators.dag_graph import node_name_for

    mapping = json.loads(labels.get("nodes_of_tasks", "{}") or "{}")
    return mapping.get(task_id) or node_name_for(task_id)


@app.get("/api/dags/{dag_id}/dry-run", dependencies=_dag_access)
def dry_run(dag_id: Annotated[str, PathParam()], session: SessionDep) -> dict[str, Any]:
    """The plan SamuLLM would make for this DAG with its default params (nothing runs).

    The DAG file is parsed in a child process (user code stays out of the api-server)."""
    fileloc = session.scalar(select(DagModel.fileloc).where(DagModel.dag_id == dag_id))
    if not fileloc:
        raise HTTPException(404, f"DAG {dag_id!r} is not known")
    proc = subprocess.run(
        [sys.executable, "-m", "plugins.samullm_dry_run", "--file", fileloc, "--dag-id", dag_id],
        capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT,
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise HTTPException(400, lines[-1] if lines else f"dry run failed ({proc.returncode})")
    application = json.loads(proc.stdout.strip().splitlines()[-1])
    schedule = _runner("dry_run", application)
    return schedule_chart(schedule)
