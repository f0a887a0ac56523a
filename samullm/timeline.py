"""Stage semantics as a state machine over one sample of request lengths.

A stage is a set of nodes that run at once on disjoint devices, each with a plan. It ends at its
first finisher; the others carry their unfinished requests on. A node that keeps its plan and
devices (`Keep`) pays nothing and loses nothing; a node (re)launched (`Launch`) pays the engine
load (unless it takes over a warm engine of the same model, plan and devices left by a finished
node) and restarts its unfinished requests from scratch (in-flight progress is lost, finished
requests never). Every search in this package (greedy planner, baselines, exhaustive optimum)
and the benchmark's truth executor advance applications with this one class.

Transitions always simulate the requests a launch runs (the search's coster may subsample
large request sets, see `costing`); only candidate scoring estimates launches on partial
request sets (`launch_times(..., estimate=True)`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from samullm.costing import Coster
from samullm.plans import ExecPlan, Replicas, place


@dataclass(frozen=True)
class Keep:
    """Keep a running node's plan and devices."""


@dataclass(frozen=True)
class Launch:
    plan: ExecPlan
    replicas: Replicas | None = None  # wanted devices (a warm engine's or pinned); else placed


Choice = Keep | Launch


@dataclass
class Run:
    plan: ExecPlan
    replicas: Replicas
    start: float
    load: float
    requests: np.ndarray  # indices into the node's requests
    finish: np.ndarray  # absolute finish times, aligned with `requests`

    @property
    def end(self) -> float:
        return float(self.finish.max()) if self.finish.size else self.start + self.load


@dataclass
class NodeProgress:
    n: int
    done: np.ndarray
    run: Run | None = None
    finished: bool = False
    launches: int = 0

    def remaining(self) -> np.ndarray:
        return np.flatnonzero(~self.done)


@dataclass
class MemberRecord:
    plan: ExecPlan
    replicas: Replicas
    action: str
    load: float
    done_before: int
    done_after: int
    finishes: bool


@dataclass
class StageRecord:
    start: float
    end: float
    ender: str
    members: dict[str, MemberRecord]


@dataclass
class Warm:
    engine_key: str
    plan: ExecPlan
    node: str = ""  # the finished node that left it


class InvalidStage(ValueError):
    """The stage cannot run from this state (devices do not fit, node not runnable, ...)."""


@dataclass
class Timeline:
    coster: Coster
    sample: int
    time: float = 0.0
    nodes: dict[str, NodeProgress] = field(default_factory=dict)
    warm: dict[Replicas, Warm] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        coster: Coster,
        sample: int,
        running: dict[str, tuple[ExecPlan, Replicas]] | None = None,
        warm: dict[Replicas, Warm] | None = None,
    ) -> Timeline:
        """The state at time 0: nothing done (the coster's requests are those still to do),
        `running` nodes already loaded on their devices, `warm` engines left by finished nodes."""
        tl = cls(coster, sample)
        for name in coster.nodes():
            n = coster.num_requests(name, sample)
            tl.nodes[name] = NodeProgress(n, np.zeros(n, dtype=bool), finished=(n == 0))
        for name, (plan, replicas) in (running or {}).items():
            prog = tl.nodes[name]
            if prog.finished:
                continue
            idx = np.arange(prog.n)
            prog.run = Run(plan, replicas, 0.0, 0.0, idx, coster.run_times(name, plan, idx, sample))
            prog.launches = 1
        tl.warm = dict(warm or {})
        return tl

    def copy(self) -> Timeline:
        new = copy.copy(self)
        new.nodes = {k: copy.copy(v) for k, v in self.nodes.items()}  # arrays are replaced, never mutated
        new.warm = dict(self.warm)
        new.records = list(self.records)
        return new

    # --- queries ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(p.finished for p in self.nodes.values())

    def runnable(self) -> list[str]:
        return [
            name
            for name, p in self.nodes.items()
            if not p.finished and all(self.nodes[u].finished for u in self.coster.upstream(name))
        ]

    def running(self) -> list[str]:
        return [name for name, p in self.nodes.items() if p.run is not None]

    def busy_devices(self, keep: list[str]) -> set[int]:
        return {d for name in keep for r in self.nodes[name].run.replicas for d in r}

    def warm_for(self, name: str, plan: ExecPlan) -> list[Replicas]:
        key = self.coster.engine_key(name)
        return [reps for reps, w in self.warm.items() if w.engine_key == key and w.plan == plan]

    # --- timing of a launch ----------------------------------------------------------------

    def launch_times(self, name: str, plan: ExecPlan, estimate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(request indices, seconds after load to each finish) for launching `name` now.

        `estimate` (the search's candidate scoring) times a launch on a partial request set
        from the node's full-set run under that plan, without a new simulation: the j-th of the
        r remaining requests finishes no sooner than the full run's j-th finish (an empty engine
        ramping up) nor than the full run's last r finishes take (steady state and drain)."""
        prog = self.nodes[name]
        remaining = prog.remaining()
        if remaining.size == prog.n or not estimate:
            return remaining, self.coster.run_times(name, plan, remaining, self.sample)
        full = self.coster.run_times(name, plan, np.arange(prog.n), self.sample)
        ordered = remaining[np.argsort(full[remaining], kind="stable")]
        base = np.sort(full)
        skip = prog.n - remaining.size
        return ordered, np.maximum(base[: remaining.size], base[skip:] - base[skip - 1])

    def load_for(self, name: str, plan: ExecPlan, replicas: Replicas) -> float:
        w = self.warm.get(replicas)
        if w is not None and w.engine_key == self.coster.engine_key(name) and w.plan == plan:
            return 0.0
        return self.coster.load_seconds(name, plan)

    # --- the transition --------------------------------------------------------------------

    def apply(self, choice: dict[str, Choice], until: set[str] | None = None) -> StageRecord:
        """Run one stage from the current time to its first finisher; return what happened.

        `until` replays a planned stage instead: it ends when all of those members have
        finished (in another sample of lengths, the planned first finisher may not be first)."""
        if not choice:
            raise InvalidStage("a stage needs at least one node")
        runnable = set(self.runnable())
        for name, c in choice.items():
            if name not in runnable:
                raise InvalidStage(f"{name} is not runnable")
            if isinstance(c, Keep) and self.nodes[name].run is None:
                raise InvalidStage(f"{name} is not running, so it cannot keep its plan")
        keep = [n for n, c in choice.items() if isinstance(c, Keep)]
        launches = {n: c for n, c in choice.items() if isinstance(c, Launch)}
        prefer = {n: c.replicas for n, c in launches.items() if c.replicas is not None}
        pinned = {n: self.coster.pinned_replicas(n) for n in launches}
        prefer.update({n: r for n, r in pinned.items() if r is not None})
        # A launch with no devices asked for takes over a warm engine of its model and plan
        # when one is free, as the runtime would.
        claimed = {d for reps in prefer.values() for r in reps for d in r} | self.busy_devices(keep)
        for n, c in launches.items():
            if n in prefer:
                continue
            for reps in self.warm_for(n, c.plan):
                devs = {d for r in reps for d in r}
                if not devs & claimed:
                    prefer[n] = reps
                    claimed |= devs
                    break
        assignment = place(
            self.coster.topology,
            [(n, c.plan) for n, c in launches.items()],
            busy=self.busy_devices(keep),
            prefer=prefer,
        )
        if assignment is None:
            raise InvalidStage("the stage's plans do not fit on the free devices")
        for n, reps in pinned.items():
            if reps is not None and assignment[n] != reps:
                raise InvalidStage(f"{n} is pinned to devices {reps}, which are busy")

        # Nodes running now but not kept stop: unfinished requests lose their progress.
        before = {n: int(p.done.sum()) for n, p in self.nodes.items()}
        actions = {}
        was_running = set()
        for name, prog in self.nodes.items():
            if prog.run is not None and not isinstance(choice.get(name), Keep):
                prog.run = None
                was_running.add(name)
        for name, c in launches.items():
            prog = self.nodes[name]
            reps = assignment[name]
            load = self.load_for(name, c.plan, reps)
            idx, times = self.launch_times(name, c.plan)
            prog.run = Run(c.plan, reps, self.time, load, idx, self.time + load + times)
            actions[name] = "start" if prog.launches == 0 else ("restart" if name in was_running else "resume")
            prog.launches += 1
        for name in keep:
            actions[name] = "continue"
        used = {d for n in choice for r in self.nodes[n].run.replicas for d in r}
        self.warm = {reps: w for reps, w in self.warm.items() if not used & {d for r in reps for d in r}}

        ends = {n: self.nodes[n].run.end for n in choice}
        wait_for = [n for n in (until or ()) if n in ends]
        if wait_for:
            ender = max(wait_for, key=lambda n: (ends[n], n))
        else:
            ender = min(ends, key=lambda n: (ends[n], n))
        end = ends[ender]
        members = {}
        for name in choice:
            prog = self.nodes[name]
            run = prog.run
            finished_now = run.requests[run.finish <= end]
            done = prog.done.copy()
            done[finished_now] = True
            prog.done = done
            finishes = bool(done.all())
            members[name] = MemberRecord(
                run.plan, run.replicas, actions[name], run.load if actions[name] != "continue" else 0.0,
                before[name], int(done.sum()), finishes,
            )
            if finishes:
                prog.finished = True
                self.warm[run.replicas] = Warm(self.coster.engine_key(name), run.plan, name)
                prog.run = None
        record = StageRecord(self.time, end, ender, members)
        self.time = end
        self.records.append(record)
        return record
