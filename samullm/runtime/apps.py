"""The runner's memory of a run and its nodes (the store holds the same, durably), and how a
run is built from its registration: parsed, checked, its rows loaded, before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samullm.datasets import ResolvedApp, resolve
from samullm.graph import Application, application_from_dict
from samullm.results import NodeCheckpoint
from samullm.runtime import jobs
from samullm.runtime.launch import Launch
from samullm.runtime.rows import with_context
from samullm.runtime.stages import StageTracker
from samullm.schedule import Schedule


@dataclass
class NodeRt:
    name: str
    state: str = "pending"
    submitted: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    rows: list[str] | None = None
    launch: Launch | None = None
    crashes: int = 0
    error: str | None = None
    # Whether its rows were checked for work since it last became launchable: a node with no
    # row left (routed none, or all done before a restart) needs no devices, so no plan puts
    # it in a stage (the planner sees it finished); the runner completes it directly.
    checked_for_work: bool = False


@dataclass
class AppRt:
    id: str
    app: Application  # with the run's context added to its rows
    resolved: ResolvedApp
    method: str
    results_base: str
    checkpoint_dir: Path
    context_keys: set[str]
    nodes: dict[str, NodeRt]
    tracker: StageTracker = field(default_factory=StageTracker)
    plan: Schedule | None = None
    plan_version: int = 0
    cancelled: bool = False
    done: bool = False
    texts: dict[str, dict[str, str]] = field(default_factory=dict)  # succeeded node -> row -> text
    idle_since: float | None = None  # since when nodes could run but its plan starts none

    def checkpoint(self, node: str) -> NodeCheckpoint:
        return NodeCheckpoint(self.checkpoint_dir / node)


def build_app(app_run_id: str, graph: dict, context: dict, method: str, results_base: str, checkpoint_dir: Path,
              device_kind: str, cpu_kv_cache_bytes: int) -> AppRt:
    """A run from its registration; raises UserInputError for anything that would fail later
    (application structure, data, template names, engine options, planner method)."""
    from samullm.baselines import get_baseline

    app = application_from_dict(graph, source=f"run {app_run_id}")
    jobs.check_engine_options(app)
    if method != "samullm":
        get_baseline(method)
    app_ctx = with_context(app, context or {})
    resolved = resolve(app_ctx)
    for node in app.nodes:  # option values vLLM would refuse, before anything runs
        jobs.worker_engine_options(node, device_kind, cpu_kv_cache_bytes)
    return AppRt(
        id=app_run_id, app=app_ctx, resolved=resolved, method=method, results_base=results_base,
        checkpoint_dir=checkpoint_dir, context_keys=set(context or {}),
        nodes={n.name: NodeRt(n.name) for n in app.nodes},
    )
