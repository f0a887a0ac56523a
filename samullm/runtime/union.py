"""Planning several application runs together over one node's devices.

When two runs are active at once (two Airflow DAG runs, say), every re-plan considers all their
remaining nodes over the whole device set, as one application: `UnionCoster` presents the
runs' costers as one (node names become "<member index>/<node>", which no node name can
clash with since node names are identifiers), the planner plans it like any application (the
objective is then the time until every active run is done), and `split_schedule` cuts the
schedule into each run's own view (its nodes only, its names), which is what the runner stores
as that run's plan version and executes.

Why one plan and not a share of devices per run: a fixed share idles devices whenever one run
is waiting on a judge or a router while the other could use them, and re-partitioning at every
node finish is what the union planner does anyway, with the cost model deciding. Each run keeps
its own statistics and state inside its own coster (observed lengths, finished rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samullm.plans import ExecPlan
from samullm.schedule import NodeSpan, Schedule, Stage

SEP = "/"


def member_name(index: int, node: str) -> str:
    return f"{index}{SEP}{node}"


def split_name(name: str) -> tuple[int, str]:
    index, node = name.split(SEP, 1)
    return int(index), node


class UnionCoster:
    """The `Coster` protocol over several runs' costers (all on the same topology)."""

    def __init__(self, members: list) -> None:
        if not members:
            raise ValueError("a union needs at least one member")
        self.members = members
        self.topology = members[0].topology
        for m in members[1:]:
            if m.topology != self.topology:
                raise ValueError("the runs of a union must be planned on the same devices")
        self._order = [member_name(i, n) for i, c in enumerate(members) for n in c.nodes()]

    def _of(self, name: str):
        index, node = split_name(name)
        return index, self.members[index], node

    def with_max_requests(self, max_requests: int | None) -> UnionCoster:
        return UnionCoster([m.with_max_requests(max_requests) for m in self.members])

    def nodes(self) -> list[str]:
        return list(self._order)

    def upstream(self, node: str) -> list[str]:
        i, c, n = self._of(node)
        return [member_name(i, u) for u in c.upstream(n)]

    def engine_key(self, node: str) -> str:
        i, c, n = self._of(node)
        return member_name(i, c.engine_key(n))

    def model(self, node: str) -> str:
        _, c, n = self._of(node)
        return c.model(n)

    def weight_bytes(self, node: str) -> int:
        _, c, n = self._of(node)
        return c.weight_bytes(n)

    def plans(self, node: str) -> list[ExecPlan]:
        _, c, n = self._of(node)
        return c.plans(n)

    def pinned_replicas(self, node: str):
        _, c, n = self._of(node)
        return c.pinned_replicas(n)

    def num_requests(self, node: str, sample: int) -> int:
        _, c, n = self._of(node)
        return c.num_requests(n, sample)

    def work(self, node: str, sample: int) -> np.ndarray:
        _, c, n = self._of(node)
        return c.work(n, sample)

    def run_times(self, node: str, plan: ExecPlan, requests: np.ndarray, sample: int) -> np.ndarray:
        _, c, n = self._of(node)
        return c.run_times(n, plan, requests, sample)

    def load_seconds(self, node: str, plan: ExecPlan) -> float:
        _, c, n = self._of(node)
        return c.load_seconds(n, plan)


@dataclass(frozen=True)
class UnionName:
    """What `plan()` reads of its `app` argument when it is given a coster."""

    name: str


def split_schedule(schedule: Schedule, index: int, application: str, others: list[str]) -> Schedule:
    """Member `index`'s part of a union schedule: the stages it has nodes in (renumbered), its
    nodes under their own names, its spans; makespan = when its last node is predicted done."""
    stages = []
    for stage in schedule.stages:
        mine = [n for n in stage.nodes if split_name(n.node)[0] == index]
        if not mine:
            continue
        ender_index, ender = split_name(stage.ends_with)
        stages.append(
            Stage(
                index=len(stages),
                nodes=[n.model_copy(update={"node": split_name(n.node)[1]}) for n in mine],
                start=stage.start, end=stage.end, start_std=stage.start_std, end_std=stage.end_std,
                ends_with=ender if ender_index == index else f"{ender} (another run)",
            )
        )
    spans = [
        NodeSpan(**{**s.model_dump(), "node": split_name(s.node)[1]})
        for s in schedule.spans
        if split_name(s.node)[0] == index
    ]
    ends = [s.end for s in spans] or [0.0]
    stds = [s.end_std for s in spans] or [0.0]
    k = int(np.argmax(ends))
    notes = list(schedule.notes)
    if others:
        notes.append(f"planned together with the active runs {others} over the same devices")
    return schedule.model_copy(
        update={
            "application": application,
            "stages": stages,
            "spans": spans,
            "makespan": float(ends[k]),
            "makespan_std": float(stds[k]),
            "makespan_samples": [],
            "notes": notes,
        }
    )
