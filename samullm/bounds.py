"""How short any schedule could still be, from a timeline's state: two lower bounds.

- work: every unfinished node needs at least the device-seconds of its most economical plan
  (its remaining requests, plus the engine load unless a warm engine of its model is there or
  another unfinished node of the same model, not one that reads its outputs, may leave one),
  and there are `num_devices`;
- critical path: along every dependency chain each node takes at least its fastest plan's
  time (load included on the same terms); with `overlap_loads` (plans may preload a node's
  engines while its inputs are produced) a node's load may overlap its upstream nodes.

Neither counts queueing for devices or tails, so real schedules sit above max(work, critical
path). The exhaustive search (`optimal.py`) prunes with it; the planner benchmark prints it
beside every method's makespan, to show the headroom left over the best baseline and whether a
speedup goal is reachable at all for a workload.
"""

from __future__ import annotations

from dataclasses import dataclass

from samullm.timeline import Timeline


@dataclass(frozen=True)
class MakespanBound:
    work_s: float
    critical_path_s: float

    @property
    def seconds(self) -> float:
        return max(self.work_s, self.critical_path_s)


class LowerBounds:
    """Shortest remaining time and fewest remaining device-seconds per node (the coster's
    simulations are memoised, so evaluating many timelines of one coster stays cheap)."""

    def __init__(self, tl: Timeline, overlap_loads: bool = False) -> None:
        self.coster = tl.coster
        self.overlap_loads = overlap_loads
        self.descendants: dict[str, set[str]] = {}  # nodes that need a node's outputs, transitively
        for name in reversed(self.coster.nodes()):  # topological order, reversed
            self.descendants.setdefault(name, set())
            for up in self.coster.upstream(name):
                self.descendants.setdefault(up, set()).update({name}, self.descendants[name])

    def node(self, tl: Timeline, name: str) -> tuple[float, float]:
        t, w, _ = self._node(tl, name, 0.0)
        return t, w

    def _node(self, tl: Timeline, name: str, ready: float) -> tuple[float, float, float]:
        """(shortest time, fewest device-seconds, earliest finish when its inputs are ready at `ready`)."""
        prog = tl.nodes[name]
        if prog.finished:
            return 0.0, 0.0, ready
        best_t, best_w, best_f = float("inf"), float("inf"), float("inf")
        if prog.run is not None:
            left = max(0.0, prog.run.end - tl.time)
            best_t, best_w, best_f = left, left * prog.run.plan.num_devices, ready + left
        remaining = prog.remaining()
        key = self.coster.engine_key(name)
        # Another unfinished node of the same engine may leave a warm engine to take over later,
        # unless it needs this node's outputs (it cannot finish before this node starts: the
        # first summariser of a chain of one model pays its load).
        shared = any(
            other != name and not p.finished and self.coster.engine_key(other) == key
            and other not in self.descendants[name]
            for other, p in tl.nodes.items()
        )
        for plan in self.coster.plans(name):
            # a launch pays its load unless a warm engine of this model and plan is (or may be) there
            avoidable = shared or bool(tl.warm_for(name, plan))
            load = 0.0 if avoidable else self.coster.load_seconds(name, plan)
            run = float(self.coster.run_times(name, plan, remaining, tl.sample).max(initial=0.0))
            best_t = min(best_t, load + run)
            best_w = min(best_w, (load + run) * plan.num_devices)
            best_f = min(best_f, (max(ready, load) if self.overlap_loads else ready + load) + run)
        return best_t, best_w, best_f

    def bound(self, tl: Timeline) -> MakespanBound:
        """Both bounds on the time still needed from `tl` (add tl.time for a makespan)."""
        finish: dict[str, float] = {}
        work = 0.0
        for name in self.coster.nodes():  # topological order
            ready = max((finish[u] for u in self.coster.upstream(name)), default=0.0)
            _, w, finish[name] = self._node(tl, name, ready)
            work += w
        return MakespanBound(work_s=work / self.coster.topology.num_devices,
                             critical_path_s=max(finish.values(), default=0.0))

    def lower_bound(self, tl: Timeline) -> float:
        return self.bound(tl).seconds


def makespan_lower_bound(tl: Timeline, overlap_loads: bool = False) -> MakespanBound:
    """The bounds of the module docstring from `tl` (e.g. Timeline.start(coster, sample))."""
    return LowerBounds(tl, overlap_loads).bound(tl)
