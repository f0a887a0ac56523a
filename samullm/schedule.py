"""The planner's output as plain data: stages, node plans, device ids, predicted times.

The runner executes it, the store saves it, the CLI prints it and the UI draws it; none of them
needs the planner to read it. Times are seconds from the moment the plan was made (add the
application's elapsed time to place them on its clock); `*_std` is the spread over the sampled
output lengths (K samples of the whole schedule).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Action = Literal["start", "continue", "restart", "resume", "preload"]


class StageNode(BaseModel):
    """One node's part in a stage.

    action: start (first launch), continue (same plan and devices as before: no reload, no
      lost work), restart (running, moved to another plan/devices: in-flight requests restart),
      resume (was paused earlier and starts again), preload (its inputs are not ready: its
      engines load on these devices and wait for them; a later stage launches it there).
    load_seconds: engine start-up paid at the start of the stage (0 for continue and for a warm
      engine reused from a finished node of the same model, plan and devices).
    requests_done_before/after: expected finished requests of the node at the stage's start/end.
    """

    node: str
    model: str
    tp: int
    dp: int
    devices: list[int]
    replicas: list[list[int]]
    action: Action
    load_seconds: float = 0.0
    requests_total: int
    requests_done_before: float
    requests_done_after: float
    finishes: bool = False


class Stage(BaseModel):
    index: int
    nodes: list[StageNode]
    start: float
    end: float
    start_std: float = 0.0
    end_std: float = 0.0
    ends_with: str = Field(description="the node whose finish ends the stage")

    def node(self, name: str) -> StageNode | None:
        return next((n for n in self.nodes if n.node == name), None)


class NodeSpan(BaseModel):
    """When a node runs, over all stages: first start, predicted finish and its spread."""

    node: str
    model: str
    start: float
    end: float
    end_std: float = 0.0


class Schedule(BaseModel):
    application: str
    node_spec: str
    num_devices: int
    method: str
    stages: list[Stage]
    spans: list[NodeSpan] = Field(default_factory=list)
    makespan: float
    makespan_std: float = 0.0
    makespan_samples: list[float] = Field(default_factory=list)
    planning_seconds: float = 0.0
    samples: int = 1
    seed: int = 0
    replanned_from_state: bool = False
    notes: list[str] = Field(default_factory=list)

    def first_stage(self) -> Stage | None:
        return self.stages[0] if self.stages else None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)
