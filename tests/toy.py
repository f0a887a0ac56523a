"""A cost model computable on paper, for planner tests.

Each node has `n` requests of `unit` seconds of work each (at TP1, one replica). A run executes
its requests one after another in the given order; plan speed = dp * tp**alpha (TP scales
sublinearly). So request k of a run finishes at (k + 1) * unit / speed seconds after load.
Loads cost `load` seconds per launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samullm.plans import ExecPlan, Topology, enumerate_plans


@dataclass
class ToyNode:
    n: int
    unit: float = 1.0
    load: float = 0.0
    deps: tuple[str, ...] = ()
    min_tp: int = 1
    max_devices: int | None = None
    size: int = 1


@dataclass
class ToyCoster:
    spec: dict[str, ToyNode]
    topology: Topology
    alpha: float = 0.8
    calls: int = field(default=0)

    def nodes(self):
        order, seen = [], set()

        def visit(n):
            if n in seen:
                return
            for d in self.spec[n].deps:
                visit(d)
            seen.add(n)
            order.append(n)

        for n in self.spec:
            visit(n)
        return order

    def upstream(self, node):
        return list(self.spec[node].deps)

    def engine_key(self, node):
        return node

    def model(self, node):
        return f"model-{node}"

    def weight_bytes(self, node):
        return self.spec[node].size

    def plans(self, node):
        s = self.spec[node]
        limit = s.max_devices or self.topology.num_devices
        return [p for p in enumerate_plans(self.topology.num_devices) if p.tp >= s.min_tp and p.num_devices <= limit
                and self.topology.tp_possible(p.tp)]

    def pinned_replicas(self, node):
        return None

    def num_requests(self, node, sample):
        return self.spec[node].n

    def work(self, node, sample):
        return np.ones(self.spec[node].n)

    def speed(self, plan: ExecPlan) -> float:
        return plan.dp * plan.tp ** self.alpha

    def run_times(self, node, plan, requests, sample):
        self.calls += 1
        m = len(requests)
        return (np.arange(m) + 1.0) * self.spec[node].unit / self.speed(plan)

    def load_seconds(self, node, plan):
        return self.spec[node].load


def pairs(n: int) -> Topology:
    return Topology.of(n, [(i, i + 1) for i in range(0, n, 2)])
