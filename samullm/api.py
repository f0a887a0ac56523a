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

Errors are JSON `{"detail": message}`: 400 bad input (the message says what to change), 401 a
missing or wrong secret, 404 an unknown run or node.

Names a node's prompt reads must be known when the run registers: dataset columns, upstream
nodes, or keys of `RegisterApplication.context` (values every prompt may read, such as Airflow
params). `SubmitNode.context` may then give other values for those keys for one node.
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
    with the same id return its status and change nothing.

    context: values every node's prompt may read beside row columns and upstream outputs (e.g.
      Airflow params); a row column of the same name wins.
    method: "samullm" (default) or a planner baseline's name, to execute that baseline's plan."""

    app_run_id: str = Field(pattern=APP_RUN_ID_PATTERN)
    application: dict[str, Any]  # a samullm.graph.Application as JSON
    results_uri: str | None = None  # base location for result files (local path or fsspec URL)
    labels: dict[str, str] = Field(default_factory=dict)  # e.g. dag_id, run_id for the UI
    context: dict[str, Any] = Field(default_factory=dict)
    method: str = "samullm"


class SubmitNode(BaseModel):
    """The node may run now: its upstream outputs exist. `context` overrides values of the
    run's context for this node's prompt. Submitting a node that succeeded changes nothing;
    submitting one that failed or was cancelled runs it again (its finished rows are kept)."""

    context: dict[str, Any] = Field(default_factory=dict)


class ResultManifest(BaseModel):
    """Where a finished node's column is and what it holds (this is what goes to XCom).
    The column file has one JSON object per row, in dataset order: row_id, text,
    prompt_tokens, output_tokens, finish_reason ("stop", "length" or "error") and error."""

    app_run_id: str
    node: str
    model: str
    uri: str
    manifest_uri: str
    rows: int
    failed_rows: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    written_at: dt.datetime


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
    result_uri: str | None = None  # the column file, once the node succeeded
    manifest_uri: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    seconds_running: float = 0.0  # engine workers' lifetime, summed over launches
    compute_seconds: float = 0.0  # of which engines were loaded and working
    load_seconds: float | None = None  # start-up of the latest launch
    crashes: int = 0  # engine workers that died without a last word (restarted while allowed)
    error: str | None = None
    # The most frequent per-row failure reasons (e.g. a prompt longer than the context), each
    # with its count; those rows are in the column with finish_reason "error".
    row_errors: list[tuple[str, int]] = Field(default_factory=list)

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
    method: str = "samullm"
    results_uri: str | None = None


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
