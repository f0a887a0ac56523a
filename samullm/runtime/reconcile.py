"""Applying a plan's first stage to what is running: which engines keep going, which stop,
which start.

The runtime runs `stages[0]` of the current plan. A node already running with the plan's TP
degree, replica count and devices keeps its engine (whatever the action says: a "restart" to
the same place would only lose work). A running node the stage moves (other TP, replicas or
devices) is stopped, keeping its finished rows, and launched again where the stage says once
its old engines have exited; a running node the stage leaves out is paused (stopped; it starts
again when a later plan includes it). A stage member that is not running is launched when it
may run (submitted, its upstream done) and its devices are free. "preload" members (engines
loaded ahead of a node's inputs, `samullm.timeline.Preload`) are left out: the runtime cannot
run them yet and its planner does not plan them; such a node starts cold when launched.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from samullm.schedule import StageNode


@dataclass(frozen=True)
class Placement:
    """A node's engines: TP degree and the device ids of each replica's TP group."""

    tp: int
    replicas: tuple[tuple[int, ...], ...]

    @property
    def dp(self) -> int:
        return len(self.replicas)

    @property
    def devices(self) -> tuple[int, ...]:
        return tuple(sorted(d for r in self.replicas for d in r))

    @classmethod
    def of(cls, tp: int, replicas) -> Placement:
        return cls(int(tp), tuple(sorted(tuple(sorted(int(d) for d in r)) for r in replicas)))

    @classmethod
    def from_stage_node(cls, node: StageNode) -> Placement:
        return cls.of(node.tp, node.replicas)

    def describe(self) -> str:
        plan = f"TP{self.tp}" + (f"xDP{self.dp}" if self.dp > 1 else "")
        return f"{plan} on devices {list(self.devices)}"


def stage_placements(nodes: list[StageNode]) -> dict[str, Placement]:
    """The members the runtime runs, by node (see the module docstring for "preload")."""
    return {sn.node: Placement.from_stage_node(sn) for sn in nodes if sn.action != "preload"}


@dataclass
class PlanDiff:
    keep: set[Hashable] = field(default_factory=set)
    stop: dict[Hashable, str] = field(default_factory=dict)  # node -> why
    launch: dict[Hashable, Placement] = field(default_factory=dict)


def diff_stage(
    stage: Mapping[Hashable, Placement],
    running: Mapping[Hashable, Placement],
    launchable: set[Hashable],
) -> PlanDiff:
    """stage: the first stage's members and placements; running: nodes whose engines run (not
    those already stopping); launchable: nodes that may start now if the stage says so."""
    diff = PlanDiff()
    for node, placed in running.items():
        wanted = stage.get(node)
        if wanted == placed:
            diff.keep.add(node)
        elif wanted is None:
            diff.stop[node] = "paused by the plan"
        else:
            diff.stop[node] = f"moved by the plan from {placed.describe()} to {wanted.describe()}"
    for node, wanted in stage.items():
        if node not in running and node in launchable:
            diff.launch[node] = wanted
    return diff
