"""The optimum under the cost model, by exhaustive search over stage sequences (small instances).

Every decision point (the start, and each first finisher) branches over every stage that can run:
any non-empty set of runnable nodes, each kept (if running), or launched with any feasible plan
(on free devices, or on a warm engine), on the node's devices. Branch and bound prunes with a
lower bound on the remaining time: the longest chain of per-node shortest remaining times, and
the remaining device-seconds of each node's most device-efficient plan spread over all devices
(engine loads included where they cannot be avoided: not for a node that keeps its engine, nor
where a warm engine of its model is there or another unfinished node of that model may leave one).
Meant for up to 5 nodes and 4 devices; larger instances are refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from samullm.bounds import LowerBounds
from samullm.errors import UserInputError
from samullm.estimates import PlannedStage
from samullm.timeline import Choice, InvalidStage, Keep, Launch, Timeline

MAX_NODES = 5
MAX_DEVICES = 4


@dataclass
class Optimum:
    makespan: float
    stages: list[PlannedStage]
    explored: int  # stages applied during the search


def _options(tl: Timeline, name: str) -> list[Choice | None]:
    prog = tl.nodes[name]
    out: list[Choice | None] = [None]
    current = prog.run.plan if prog.run is not None else None
    if prog.run is not None:
        out.append(Keep())
    for plan in tl.coster.plans(name):
        if plan != current:  # relaunching the running plan is never better than keeping it
            out.append(Launch(plan))
        for reps in tl.warm_for(name, plan):
            out.append(Launch(plan, reps))
    return out


def all_stages(tl: Timeline) -> list[dict[str, Choice]]:
    names = tl.runnable()
    per_node = [_options(tl, n) for n in names]
    devices = tl.coster.topology.num_devices
    stages = []
    for combo in itertools.product(*per_node):
        if all(c is None for c in combo):
            continue
        used = 0
        for name, c in zip(names, combo, strict=True):
            if c is not None:
                used += (tl.nodes[name].run.plan if isinstance(c, Keep) else c.plan).num_devices
        if used <= devices:
            stages.append({n: c for n, c in zip(names, combo, strict=True) if c is not None})
    return stages


def optimum(start: Callable[[], Timeline], incumbent: float = float("inf")) -> Optimum:
    """Shortest makespan over all stage sequences from `start()`; `incumbent` is a known
    makespan (e.g. the planner's) used to prune from the outset."""
    root = start()
    if len(root.nodes) > MAX_NODES or root.coster.topology.num_devices > MAX_DEVICES:
        raise UserInputError(
            f"exhaustive search is for up to {MAX_NODES} nodes and {MAX_DEVICES} devices "
            f"(got {len(root.nodes)} nodes, {root.coster.topology.num_devices} devices)"
        )
    bounds = LowerBounds(root)
    best = Optimum(incumbent * (1 + 1e-9), [], 0)
    path: list[PlannedStage] = []

    def visit(tl: Timeline) -> None:
        if tl.done:
            if tl.time < best.makespan:
                best.makespan = tl.time
                best.stages = list(path)
            return
        if tl.time + bounds.lower_bound(tl) >= best.makespan - 1e-9:
            return
        children = []
        for choice in all_stages(tl):
            child = tl.copy()
            try:
                record = child.apply(choice)
            except InvalidStage:
                continue
            best.explored += 1
            finishers = {n for n, m in record.members.items() if m.finishes}
            children.append((child.time + bounds.lower_bound(child), child, choice, finishers))
        children.sort(key=lambda c: c[0])  # most promising first: tightens the bound early
        for lb, child, choice, finishers in children:
            if lb >= best.makespan - 1e-9:
                break
            path.append((choice, finishers))
            visit(child)
            path.pop()

    visit(root)
    if not best.stages:  # nothing beat the incumbent: it is optimal
        best.makespan = incumbent
    return best
