"""Candidate stages from a state, scored by throughput (the paper's greedy criterion).

For each runnable node the options are: keep its running plan, launch it with a feasible plan
(on any free devices, or on a warm engine's devices), or leave it out. A stage's throughput is
the work its members finish before it ends (at its first finisher), over its duration, engine
loads included. Work is measured in reference GPU-seconds: a node's whole work is the
device-seconds of its most device-efficient plan, spread over its requests by tokens, so
throughput compares nodes of different sizes on one scale (the best a node can do is its
device count).

Finding the best stage is a multiple-choice knapsack per possible first finisher: fix the
option that ends first (its end is the stage end T); every other node takes the option worth
most by T among those that end no sooner, within the free devices. Per node only the fastest
option per device count survives, and one that is no faster than a cheaper one is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samullm.plans import ExecPlan
from samullm.timeline import Choice, InvalidStage, Keep, Launch, Timeline


@dataclass
class Option:
    node: str
    choice: Choice
    devices: int
    end: float
    times: np.ndarray  # ascending absolute finish times of the node's unfinished requests
    cumwork: np.ndarray  # cumulative work at those finishes

    def value(self, t: float) -> float:
        i = int(np.searchsorted(self.times, t, side="right"))
        return float(self.cumwork[i - 1]) if i else 0.0


class WorkScale:
    """Per-node factor turning token counts into reference GPU-seconds (see module doc)."""

    def __init__(self) -> None:
        self._scale: dict[tuple[str, int], float] = {}

    def get(self, tl: Timeline, name: str) -> float:
        key = (name, tl.sample)
        if key not in self._scale:
            coster = tl.coster
            prog = tl.nodes[name]
            idx = np.arange(prog.n)
            best = min(
                p.num_devices * float(coster.run_times(name, p, idx, tl.sample).max(initial=0.0))
                for p in coster.plans(name)
            )
            tokens = float(coster.work(name, tl.sample).sum())
            self._scale[key] = best / tokens if tokens > 0 else 0.0
        return self._scale[key]


def _curve(tl: Timeline, name: str, requests: np.ndarray, finish: np.ndarray, scale: float):
    order = np.argsort(finish, kind="stable")
    work = tl.coster.work(name, tl.sample)[requests[order]] * scale
    return finish[order], np.cumsum(work)


def node_options(tl: Timeline, name: str, scales: WorkScale) -> list[Option]:
    prog = tl.nodes[name]
    scale = scales.get(tl, name)
    opts: list[Option] = []
    if prog.run is not None:
        run = prog.run
        pending = ~prog.done[run.requests]
        times, cum = _curve(tl, name, run.requests[pending], run.finish[pending], scale)
        opts.append(Option(name, Keep(), run.plan.num_devices, run.end, times, cum))
    launches: list[Option] = []
    for plan in tl.coster.plans(name):
        idx, rel = tl.launch_times(name, plan, estimate=True)
        variants = [(None, tl.coster.load_seconds(name, plan))]
        variants += [(reps, 0.0) for reps in tl.warm_for(name, plan)]
        for reps, load in variants:
            finish = tl.time + load + rel
            times, cum = _curve(tl, name, idx, finish, scale)
            end = float(times[-1]) if times.size else tl.time + load
            launches.append(Option(name, Launch(plan, reps), plan.num_devices, end, times, cum))
    best_by_count: dict[int, Option] = {}
    for o in launches:
        if o.devices not in best_by_count or o.end < best_by_count[o.devices].end:
            best_by_count[o.devices] = o
    fastest = float("inf")
    for count in sorted(best_by_count):
        o = best_by_count[count]
        if o.end < fastest:
            opts.append(o)
            fastest = o.end
    return opts


@dataclass
class Candidate:
    score: float
    end: float
    choice: dict[str, Choice]


def best_stages(
    tl: Timeline, options: dict[str, list[Option]], top: int = 1, required: set[str] = frozenset()
) -> list[Candidate]:
    """The `top` best stages by throughput, each the best for a distinct first finisher.
    Nodes in `required` must be members."""
    num_devices = tl.coster.topology.num_devices
    names = list(options)
    neg = -1e300
    found: list[Candidate] = []
    for ender_name in names:
        for ender in options[ender_name]:
            t_end = ender.end
            if t_end <= tl.time or ender.devices > num_devices:
                continue
            cap = num_devices - ender.devices
            best = np.full(cap + 1, neg)
            best[0] = 0.0
            picks: list[np.ndarray] = []
            for name in names:
                if name == ender_name:
                    continue
                row = np.full(cap + 1, neg)
                which: dict[int, Option] = {}
                for o in options[name]:
                    if o.end >= t_end and o.devices <= cap:
                        v = o.value(t_end)
                        if v > row[o.devices]:
                            row[o.devices] = v
                            which[o.devices] = o
                new = np.full(cap + 1, neg) if name in required else best.copy()
                arg = np.full(cap + 1, -1)
                for c, o in which.items():
                    shifted = best[: cap + 1 - c] + row[c]
                    better = shifted > new[c:]
                    new[c:][better] = shifted[better]
                    arg[c:][better] = c
                picks.append((name, arg, which))
                best = new
            c = int(np.argmax(best))
            if best[c] <= neg / 2:
                continue
            total = best[c] + ender.value(t_end)
            choice: dict[str, Choice] = {ender_name: ender.choice}
            # Walk the knapsack back to the chosen options.
            for name, arg, which in reversed(picks):
                used = int(arg[c])
                if used > 0:
                    choice[name] = which[used].choice
                    c -= used
            found.append(Candidate(total / (t_end - tl.time), t_end, choice))
    found.sort(key=lambda cand: -cand.score)
    out: list[Candidate] = []
    seen = set()
    for cand in found:
        key = tuple(sorted((n, repr(c)) for n, c in cand.choice.items()))
        if key in seen:
            continue
        trial = tl.copy()
        try:
            trial.apply(cand.choice)
        except InvalidStage:
            continue
        seen.add(key)
        out.append(cand)
        if len(out) >= top:
            break
    return out


def stage_plans(choice: dict[str, Choice], tl: Timeline) -> dict[str, ExecPlan]:
    return {n: (tl.nodes[n].run.plan if isinstance(c, Keep) else c.plan) for n, c in choice.items()}
