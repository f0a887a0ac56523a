"""What a SamuLLM task tells its log and XCom about its node: progress lines and the manifest."""

from __future__ import annotations

from typing import Any

from samullm.api import NodeStatus


def plan_text(status: NodeStatus) -> str:
    if status.plan is None:
        return "no plan yet"
    dp = f" x DP{status.plan.dp}" if status.plan.dp > 1 else ""
    return f"TP{status.plan.tp}{dp} on devices {','.join(map(str, status.plan.devices))}"


def progress_line(status: NodeStatus) -> str:
    """One line: state, rows done of total, tokens, plan. Equal lines mean nothing changed."""
    total = status.rows_total
    pct = f" ({100.0 * status.rows_done / total:.0f}%)" if total else ""
    parts = [
        f"SamuLLM node {status.node} [{status.model}]: {status.state}",
        f"{status.rows_done}/{total} rows{pct}",
        f"{status.output_tokens} output tokens",
        plan_text(status),
    ]
    if status.rows_failed:
        parts.append(f"{status.rows_failed} rows failed")
    if status.attempts > 1:
        parts.append(f"attempt {status.attempts}")
    if status.error:
        parts.append(f"error: {status.error}")
    return ", ".join(parts)


def manifest(status: NodeStatus) -> dict[str, Any]:
    """The small record a finished task returns to XCom: where its column is and what it cost."""
    return {
        "app_run_id": status.app_run_id,
        "node": status.node,
        "model": status.model,
        "state": status.state,
        "result_uri": status.result_uri,
        "manifest_uri": status.manifest_uri,
        "rows": status.rows_done,
        "rows_total": status.rows_total,
        "rows_failed": status.rows_failed,
        "prompt_tokens": status.prompt_tokens,
        "output_tokens": status.output_tokens,
        "plan": status.plan.model_dump() if status.plan else None,
        "attempts": status.attempts,
        "started_at": status.started_at.isoformat() if status.started_at else None,
        "finished_at": status.finished_at.isoformat() if status.finished_at else None,
        "seconds_running": round(status.seconds_running, 3),
        "load_seconds": status.load_seconds,
    }
