"""How short any schedule could still be, from a timeline's state: two lower bounds.

- work: every unfinished node needs at least the device-seconds of its most economical plan
  (its remaining requests, plus the engine load unless a warm engine of its model is there or
  another unfinished node of the same model may leave one), and there are `num_devices`;
- critical path: along every dependency chain each node takes at least its fastest plan's
  time (load included on the same terms).

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

    def __init__(self, tl: Timeline) -> None:
        self.coster = tl.coster

    def node(self, tl: Timeline, name: str) -> tuple[float, float]:
        prog = tl.nodes[name]
        if prog.finished:
            return 0.0, 0.0
        best_t, best_w = float("inf"), float("inf")
        if prog.run is not None:
            left = max(0.0, prog.run.end - tl.time)
            best_t, best_w = left, left * prog.run.plan.num_devices
        remaining = prog.remaining()
        key = self.coster.engine_key(name)
        # Another unfinished node of the same engine may leave a warm engine to take over later.
        shared = any(
            other != name and not p.finished and self.coster.engine_key(other) == key
            for other, p in tl.nodes.items()
        )
        for plan in self.coster.plans(name):
            # a launch pays its load unless a warm engine of this model and plan is (or may be) there
            avoidable = shared or bool(tl.warm_for(name, plan))
            load = 0.0 if avoidable else self.coster.load_seconds(name, plan)
            t = load + float(self.coster.run_times(name, plan, remaining, tl.sample).max(initial=0.0))
            best_t = min(best_t, t)
            best_w = min(best_w, t * plan.num_devices)
        return best_t, best_w

    def bound(self, tl: Timeline) -> MakespanBound:
        """Both bounds on the time still needed from `tl` (add tl.time for a makespan)."""
        finish: dict[str, float] = {}
        work = 0.0
        for name in self.coster.nodes():  # topological order
            t, w = self.node(tl, name)
            work += w
            ready = max((finish[u] for u in self.coster.upstream(name)), default=0.0)
            finish[name] = ready + t
        return MakespanBound(work_s=work / self.coster.topology.num_devices,
                             critical_path_s=max(finish.values(), default=0.0))

    def lower_bound(self, tl: Timeline) -> float:
        return self.bound(tl).seconds


def makespan_lower_bound(tl: Timeline) -> MakespanBound:
    """The bounds of the module docstring from `tl` (e.g. Timeline.start(coster, sample))."""
    return LowerBounds(tl).bound(tl)
