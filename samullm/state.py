"""What the runtime tells the planner when it re-plans: plain data, JSON-serialisable.

After every node finishes, the runner calls `plan(app, node, state)` with what it knows now:
which nodes are done, which rows each node has finished (finished rows are never redone), which
nodes are running and where (keeping one costs nothing; moving one reloads its engine and
restarts its in-flight requests), engines left warm by finished nodes, and the statistics
observed so far (output lengths, latency corrections, router decisions, per-row output tokens
of upstream nodes).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class RunningNode(BaseModel):
    node: str
    tp: int
    dp: int = 1
    replicas: list[list[int]] = Field(description="device ids of each replica's TP group")


class WarmEngine(BaseModel):
    """An engine still loaded on `replicas` after node `node` finished; a node with the same
    model, engine options and plan may take it over without loading. `preloaded`: loaded (or
    loading, `ready_in` seconds from now) for waiting node `node`, before its inputs were ready."""

    node: str
    tp: int
    dp: int = 1
    replicas: list[list[int]]
    preloaded: bool = False
    ready_in: float = 0.0


class ObservedLengths(BaseModel):
    """Output lengths seen for one model; `capped[i]` when output i stopped at its max_tokens
    (a censored observation, not a length)."""

    lengths: list[int] = Field(default_factory=list)
    capped: list[bool] = Field(default_factory=list)


class ObservedStats(BaseModel):
    output_lengths: dict[str, ObservedLengths] = Field(default_factory=dict)  # by model
    latency_scale: dict[str, float] = Field(default_factory=dict)  # by model: measured / predicted
    output_tokens: dict[str, dict[int, int]] = Field(default_factory=dict)  # node -> row id -> tokens
    routes: dict[str, list[int]] = Field(default_factory=dict)  # routed node -> row ids it received
    # by model: tokens its output takes when a downstream prompt reads the text, per generated
    # token (text decoded then encoded again; 1.0 when never observed)
    prompt_tokens_per_output_token: dict[str, float] = Field(default_factory=dict)


class PlannerState(BaseModel):
    elapsed: float = 0.0  # seconds since the application started (for the record only)
    finished: list[str] = Field(default_factory=list)
    done_rows: dict[str, list[int]] = Field(default_factory=dict)  # node -> finished row ids
    running: list[RunningNode] = Field(default_factory=list)
    warm: list[WarmEngine] = Field(default_factory=list)
    observed: ObservedStats = Field(default_factory=ObservedStats)

    def running_node(self, name: str) -> RunningNode | None:
        return next((r for r in self.running if r.node == name), None)
