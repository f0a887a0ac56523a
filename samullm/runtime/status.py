"""The API's views of runs and nodes, read from the store (the runner writes every change there
first, so these answer the same during a run, after it, and after a runner restart)."""

from __future__ import annotations

import datetime as dt

from samullm.api import (
    ActualStage,
    ActualStageNode,
    AppStatus,
    AppView,
    NodePlan,
    NodeStatus,
    PlanVersion,
)
from samullm.schedule import Schedule
from samullm.store import Store


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """Datetimes from SQLite come back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def app_status(store: Store, app_run_id: str) -> AppStatus:
    run = store.get_app_run(app_run_id)
    if run is None:
        raise KeyError(app_run_id)
    return AppStatus(
        app_run_id=run.id,
        name=run.name,
        state=run.state,
        labels=dict(run.labels or {}),
        created_at=aware(run.created_at),
        finished_at=aware(run.finished_at),
        error=run.error,
        method=run.method or "samullm",
        results_uri=run.results_uri,
    )


def _model_of(graph: dict, node: str) -> str:
    for n in graph.get("nodes", []):
        if n.get("name") == node:
            return str(n.get("model", ""))
    return ""


def node_statuses(store: Store, app_run_id: str, only: str | None = None) -> list[NodeStatus]:
    run = store.get_app_run(app_run_id)
    if run is None:
        raise KeyError(app_run_id)
    records = {r.node: r for r in store.node_records(app_run_id)}
    if only is not None and only not in records:
        raise KeyError(f"{app_run_id}/{only}")
    counts = store.row_counts(app_run_id)
    runs = store.node_runs(app_run_id, only)
    now = _now()
    out = []
    order = [n.get("name") for n in run.graph.get("nodes", [])]
    for name in [n for n in order if n in records and (only is None or n == only)]:
        rec = records[name]
        mine = [r for r in runs if r.node == name]
        c = counts.get(name, {})
        last = mine[-1] if mine else None
        running_s = compute_s = 0.0
        for r in mine:
            end = aware(r.ended_at) or now
            running_s += max(0.0, (end - aware(r.started_at)).total_seconds())
            if r.loaded_at is not None:
                compute_s += max(0.0, (end - aware(r.loaded_at)).total_seconds())
        status = NodeStatus(
            app_run_id=app_run_id,
            node=name,
            model=_model_of(run.graph, name),
            state=rec.state,
            submitted=bool(rec.submitted),
            rows_total=rec.rows_total or 0,
            rows_done=c.get("rows", 0),
            rows_failed=c.get("failed_rows", 0),
            prompt_tokens=c.get("prompt_tokens", 0),
            output_tokens=c.get("output_tokens", 0),
            attempts=len(mine),
            plan=NodePlan(tp=last.tp, dp=last.dp, devices=list(last.device_ids or [])) if last else None,
            result_uri=rec.result_uri,
            manifest_uri=rec.manifest_uri,
            started_at=aware(mine[0].started_at) if mine else None,
            finished_at=aware(rec.finished_at),
            seconds_running=round(running_s, 3),
            compute_seconds=round(compute_s, 3),
            load_seconds=last.load_seconds if last else None,
            crashes=rec.crashes or 0,
            error=rec.error,
            row_errors=store.failure_reasons(app_run_id, name) if c.get("failed_rows") else [],
        )
        out.append(status)
    return out


def node_status(store: Store, app_run_id: str, node: str) -> NodeStatus:
    found = node_statuses(store, app_run_id, only=node)
    if not found:
        raise KeyError(f"{app_run_id}/{node}")
    return found[0]


def app_view(store: Store, app_run_id: str) -> AppView:
    status = app_status(store, app_run_id)
    created = status.created_at
    end = status.finished_at or _now()

    def since(t: dt.datetime | None) -> float | None:
        return None if t is None else round((aware(t) - created).total_seconds(), 3)

    plans = [
        PlanVersion(
            version=p.version,
            reason=p.reason,
            made_at=since(p.created_at),
            planning_seconds=p.planning_seconds,
            schedule=Schedule.model_validate(p.schedule),
        )
        for p in store.plans(app_run_id)
    ]
    stages = [
        ActualStage(
            index=s.index,
            plan_version=s.plan_version,
            nodes=[ActualStageNode(node=n["node"], tp=n["tp"], dp=n.get("dp", 1), devices=n["devices"]) for n in s.nodes],
            start=since(s.started_at),
            end=since(s.ended_at),
        )
        for s in store.stages(app_run_id)
    ]
    return AppView(
        app=status,
        plans=plans,
        stages=stages,
        nodes=node_statuses(store, app_run_id),
        elapsed=round((end - created).total_seconds(), 3),
    )
