"""What the runner and its clients say to each other: plain data, no policy.

The runner (`samullm runner`, `samullm.service`) serves these over HTTP on loopback, guarded by a
shared secret; `samullm.client.RunnerClient` is the only code that knows the routes. The Airflow
operators, the CLI and the plugin speak through that client or read the same models from the store.

Routes (all JSON; `Authorization: Bearer <secret>` on every route but /health):
  GET  /health                                  -> Health
  POST /v1/apps                                 RegisterApplication -> AppStatus (idempotent)
  GET  /v1/apps                                 -> list[AppStatus]
  GET  /v1/apps/{app_run_id}                    -> AppView (plans, stages, nodes)
  POST /v1/apps/{app_run_id}/nodes/{node}/submit SubmitNode -> NodeStatus (idempotent)
  GET  /v1/apps/{app_run_id}/nodes/{node}       -> NodeStatus
  POST /v1/apps/{app_run_id}/cancel             -> AppStatus
  POST /v1/plan                                 DryRun -> samullm.schedule.Schedule (nothing runs)
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from samullm.schedule import Schedule

# Airflow run ids match [A-Za-z0-9_.~:+-]+; a slash is kept out so ids stay one URL segment.
APP_RUN_ID_PATTERN = r"^[A-Za-z0-9_.~:+\-]+$"
SECRET_HEADER = "Authorization"

NodeState = Literal[
    "pending",  # registered, not yet submitted (its inputs may not exist yet)
    "waiting",  # submitted, waiting for devices or for its stage
    "loading",  # engine starting
    "running",
    "preempted",  # stopped by a re-plan; will restart with the rows still missing
    "success",
    "failed",
    "cancelled",
]
AppState = Literal["running", "success", "failed", "cancelled"]
TERMINAL_NODE_STATES = frozenset({"success", "failed", "cancelled"})


def app_run_id_for(dag_id: str, run_id: str) -> str:
    """The runner's id of one DAG run: both parts, with anything outside the pattern replaced."""
    return re.sub(r"[^A-Za-z0-9_.~:+\-]", "_", f"{dag_id}.{run_id}")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    node_spec: str
    num_devices: int
    devices_busy: list[int] = Field(default_factory=list)
    active_apps: int = 0


class RegisterApplication(BaseModel):
    """Register one run of an application. The first call creates it and plans it; later calls
    with the same id return its status and change nothing."""

    app_run_id: str = Field(pattern=APP_RUN_ID_PATTERN)
    application: dict[str, Any]  # a samullm.graph.Application as JSON
    results_uri: str | None = None  # base location for result files (local path or fsspec URL)
    labels: dict[str, str] = Field(default_factory=dict)  # e.g. dag_id, run_id for the UI


class SubmitNode(BaseModel):
    """The node may run now: its upstream outputs exist. `context` holds extra values its
    prompt may read beside row columns and upstream outputs (e.g. Airflow params)."""

    context: dict[str, Any] = Field(default_factory=dict)


class DryRun(BaseModel):
    application: dict[str, Any]
    node_spec: str | None = None  # preset name or file path; default: the runner's own node
    baseline: str | None = None


class NodePlan(BaseModel):
    tp: int
    dp: int = 1
    devices: list[int]


class NodeStatus(BaseModel):
    app_run_id: str
    node: str
    model: str
    state: NodeState
    submitted: bool = False
    rows_total: int = 0
    rows_done: int = 0
    rows_failed: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    attempts: int = 0
    plan: NodePlan | None = None
    result_uri: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    seconds_running: float = 0.0
    load_seconds: float | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_NODE_STATES


class AppStatus(BaseModel):
    app_run_id: str
    name: str
    state: AppState
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error: str | None = None


class ActualStageNode(BaseModel):
    node: str
    tp: int
    dp: int = 1
    devices: list[int]


class ActualStage(BaseModel):
    index: int
    plan_version: int
    nodes: list[ActualStageNode]
    start: float  # seconds since the app run was created
    end: float | None = None


class PlanVersion(BaseModel):
    version: int
    reason: str
    made_at: float  # seconds since the app run was created
    planning_seconds: float
    schedule: Schedule


class AppView(BaseModel):
    """Everything the UI draws for one run: the plans made, the stages as they ran, the nodes."""

    app: AppStatus
    plans: list[PlanVersion]
    stages: list[ActualStage]
    nodes: list[NodeStatus]
    elapsed: float

    @field_validator("plans")
    @classmethod
    def _ordered(cls, plans: list[PlanVersion]) -> list[PlanVersion]:
        return sorted(plans, key=lambda p: p.version)
