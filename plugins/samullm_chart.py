"""What the SamuLLM views draw, computed from the runner's plain data (no Airflow, no HTTP).

`run_chart(view)` turns an `AppView` into one row per node with its planned bars (from the first
plan and from the latest re-plan, on the run's clock) and its actual bars (one per actual stage
the node ran in; an open stage ends at "now"), plus per-node progress and metrics. `schedule_chart`
does the same for a dry run's schedule (planned bars only). The browser only lays them out.
"""

from __future__ import annotations

from typing import Any

from samullm.api import AppView, NodeStatus
from samullm.schedule import Schedule


def planned_bars(schedule: Schedule, offset: float = 0.0, version: int = 1) -> dict[str, list[dict[str, Any]]]:
    """node -> its bars in a schedule, one per stage it runs in, shifted by `offset` seconds."""
    bars: dict[str, list[dict[str, Any]]] = {}
    for stage in schedule.stages:
        for n in stage.nodes:
            bars.setdefault(n.node, []).append({
                "stage": stage.index, "start": offset + stage.start, "end": offset + stage.end,
                "tp": n.tp, "dp": n.dp, "devices": list(n.devices), "action": n.action,
                "load_seconds": n.load_seconds, "plan_version": version,
                "ends_stage": stage.ends_with == n.node, "finishes": n.finishes,
            })
    return bars


def actual_bars(view: AppView) -> dict[str, list[dict[str, Any]]]:
    bars: dict[str, list[dict[str, Any]]] = {}
    for stage in view.stages:
        end = stage.end if stage.end is not None else view.elapsed
        for n in stage.nodes:
            bars.setdefault(n.node, []).append({
                "stage": stage.index, "start": stage.start, "end": max(end, stage.start),
                "open": stage.end is None, "tp": n.tp, "dp": n.dp, "devices": list(n.devices),
                "plan_version": stage.plan_version,
            })
    return bars


def node_metrics(status: NodeStatus) -> dict[str, Any]:
    total = status.rows_total
    return {
        "node": status.node, "model": status.model, "state": status.state,
        "rows_done": status.rows_done, "rows_total": total, "rows_failed": status.rows_failed,
        "progress": (status.rows_done / total) if total else (1.0 if status.state == "success" else 0.0),
        "prompt_tokens": status.prompt_tokens, "output_tokens": status.output_tokens,
        "plan": status.plan.model_dump() if status.plan else None,
        "attempts": status.attempts, "load_seconds": status.load_seconds,
        "seconds_running": status.seconds_running,
        "tokens_per_second": (status.output_tokens / status.seconds_running) if status.seconds_running > 0 else None,
        "result_uri": status.result_uri, "error": status.error,
        "row_errors": [list(e) for e in status.row_errors],
    }


def run_chart(view: AppView) -> dict[str, Any]:
    """Rows (nodes) with planned bars from the first and the latest plan, actual bars, metrics."""
    first = view.plans[0] if view.plans else None
    latest = view.plans[-1] if view.plans else None
    planned_first = planned_bars(first.schedule, first.made_at, first.version) if first else {}
    planned_latest = planned_bars(latest.schedule, latest.made_at, latest.version) if latest and latest is not first else {}
    actual = actual_bars(view)
    statuses = {n.node: n for n in view.nodes}
    order = [n.node for n in view.nodes]
    rows = []
    for name in order:
        rows.append({
            **node_metrics(statuses[name]),
            "planned": planned_first.get(name, []),
            "replanned": planned_latest.get(name, []),
            "actual": actual.get(name, []),
        })
    ends = [b["end"] for r in rows for key in ("planned", "replanned", "actual") for b in r[key]]
    return {
        "app": view.app.model_dump(mode="json"),
        "elapsed": view.elapsed,
        "span": max([view.elapsed, *ends]) if ends else view.elapsed,
        "plans": [{"version": p.version, "reason": p.reason, "made_at": p.made_at,
                   "makespan": p.schedule.makespan, "makespan_std": p.schedule.makespan_std,
                   "stages": len(p.schedule.stages), "planning_seconds": p.planning_seconds,
                   "method": p.schedule.method, "node_spec": p.schedule.node_spec}
                  for p in view.plans],
        "stages_planned": len(first.schedule.stages) if first else 0,
        "stages_actual": len(view.stages),
        "actual_stages": [{"index": s.index, "start": s.start, "end": s.end, "plan_version": s.plan_version,
                           "nodes": [n.node for n in s.nodes]} for s in view.stages],
        "rows": rows,
    }


def schedule_chart(schedule: Schedule) -> dict[str, Any]:
    """A dry run: the predicted bars of every node."""
    bars = planned_bars(schedule)
    names = [s.node for s in schedule.spans] or list(bars)
    models = {n.node: n.model for st in schedule.stages for n in st.nodes}
    return {
        "application": schedule.application, "node_spec": schedule.node_spec,
        "num_devices": schedule.num_devices, "method": schedule.method,
        "makespan": schedule.makespan, "makespan_std": schedule.makespan_std,
        "planning_seconds": schedule.planning_seconds, "span": schedule.makespan,
        "stages_planned": len(schedule.stages), "notes": schedule.notes,
        "rows": [{"node": name, "model": models.get(name, ""), "planned": bars.get(name, []),
                  "replanned": [], "actual": []} for name in names],
    }
