"""Stage semantics as a state machine over one sample of request lengths.

A stage is a set of nodes that run at once on disjoint devices, each with a plan. It ends at its
first finisher; the others carry their unfinished requests on. A node that keeps its plan and
devices (`Keep`) pays nothing and loses nothing; a node (re)launched (`Launch`) pays the engine
load (unless it takes over a warm engine of the same model, plan and devices left by a finished
node) and restarts its unfinished requests from scratch (in-flight progress is lost, finished
requests never). A node whose inputs are not ready yet may be preloaded (`Preload`): its
engines load on free devices during the stage and wait there, as warm engines of that node, one
per replica; when the node launches, each replica on a preloaded engine starts once that engine
is loaded (at once if it is), the others pay their load. Any launch on those devices drops them.
Every search in this package (greedy planner, baselines, exhaustive optimum) and the
benchmark's truth executor advance applications with this one class.

Transitions always simulate the requests a launch runs (the search's coster may subsample
large request sets, see `costing`); only candidate scoring estimates launches on partial
request sets (`launch_times(..., estimate=True)`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
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


@dataclass(frozen=True)
class Preload:
    """Load a waiting node's engines (one per replica of `plan`) on free devices now, to be
    taken over when its inputs are ready."""

    plan: ExecPlan
    replicas: Replicas | None = None


Choice = Keep | Launch | Preload


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
    node: str = ""  # the finished node that left it, or the waiting node it was preloaded for
    ready_at: float = 0.0  # when its load ends (a preloaded engine may still be loading)
    preload: bool = False


def uneven_shares(total: int, starts: np.ndarray, rate: float) -> np.ndarray:
    """Requests per replica so that replicas starting at `starts` (seconds) and running `rate`
    requests per second each would all finish together: water-filling, rounded to sum `total`."""
    order = np.sort(starts)
    for k in range(1, order.size + 1):  # k replicas start before the common finish
        finish = (total / rate + order[:k].sum()) / k
        if k == order.size or finish <= order[k]:
            break
    exact = np.maximum(0.0, finish - starts) * rate
    shares = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - shares))[: total - int(shares.sum())]:
        shares[i] += 1
    return shares


def interleave(shares: np.ndarray) -> np.ndarray:
    """Replica index per position, each replica's positions spread evenly over the sequence
    (replica i owns shares[i] of them); equal shares give round robin."""
    keys = np.concatenate([(np.arange(n) + 0.5) / n for n in shares if n > 0] or [np.zeros(0)])
    who = np.concatenate([np.full(n, i) for i, n in enumerate(shares) if n > 0] or [np.zeros(0, int)])
    return who[np.argsort(keys, kind="stable")]


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

    def can_preload(self, name: str, stage: Iterable[str]) -> bool:
        """Whether `name` may be preloaded in a stage of `stage` nodes: it waits (not done, not
        running, some input not ready) and every input is done or produced by that stage."""
        prog, ups = self.nodes[name], self.coster.upstream(name)
        if prog.finished or prog.run is not None or all(self.nodes[u].finished for u in ups):
            return False
        return all(self.nodes[u].finished or u in stage for u in ups)

    def preloaded(self, name: str) -> dict[tuple[int, ...], Warm]:
        """Engines preloaded for `name`, by replica devices."""
        return {reps[0]: w for reps, w in self.warm.items() if w.preload and w.node == name}

    def preload_devices(self) -> set[int]:
        return {d for reps, w in self.warm.items() if w.preload for r in reps for d in r}

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
        return float(self.replica_loads(name, plan, replicas).max(initial=0.0))

    def replica_loads(self, name: str, plan: ExecPlan, replicas: Replicas) -> np.ndarray:
        """Seconds from now until each replica of a launch on `replicas` can start its requests."""
        w = self.warm.get(replicas)
        if w is not None and w.engine_key == self.coster.engine_key(name) and w.plan == plan:
            return np.full(len(replicas), max(0.0, w.ready_at - self.time))
        cold = self.coster.load_seconds(name, plan)
        pre = self.preloaded(name)
        out = np.full(len(replicas), cold)
        for i, group in enumerate(replicas):
            p = pre.get(tuple(group))
            if p is not None and p.plan.tp == plan.tp:
                out[i] = max(0.0, p.ready_at - self.time)
        return out

    def estimated_end(self, name: str, plan: ExecPlan) -> float:
        """When launching `name` now on `plan` would end, its preloaded engines counted (the
        search's quick estimate: no placement, no simulation beyond the full-set run)."""
        _, rel = self.launch_times(name, plan, estimate=True)
        run = float(rel.max(initial=0.0))
        warm = [self.load_for(name, plan, reps) for reps in self.warm_for(name, plan)]
        cold = min(warm) if warm else self.coster.load_seconds(name, plan)
        ready = sorted(max(0.0, w.ready_at - self.time) for w in self.preloaded(name).values() if w.plan.tp == plan.tp)
        if not ready or cold == 0.0 or rel.size == 0:
            return self.time + cold + run
        starts = np.array((ready + [cold] * plan.dp)[: plan.dp])
        rate = rel.size / plan.dp / max(run, 1e-9)
        shares = uneven_shares(rel.size, starts, rate)
        return self.time + float(np.max(np.where(shares > 0, starts + shares / rate, 0.0)))

    def _launch_finishes(self, name: str, plan: ExecPlan, loads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(requests, absolute finish times) of launching `name` now whose replicas start after
        `loads` seconds. Replicas that start at once get the same share (round robin); when some
        start sooner (preloaded engines), the shares are sized so that all replicas would finish
        together at the even split's rate (the runtime splits the rows the same way)."""
        idx, times = self.launch_times(name, plan)
        if plan.dp == 1 or idx.size == 0 or float(np.ptp(loads)) < 1e-6:
            return idx, self.time + loads[0] + times
        rate = idx.size / plan.dp / max(float(times.max()), 1e-9)  # requests per second per replica
        shares = uneven_shares(idx.size, loads, rate)
        finish = np.empty(idx.size)
        owner = interleave(shares)
        one = ExecPlan(plan.tp, 1)
        for i in range(plan.dp):
            mine = np.flatnonzero(owner == i)
            if mine.size:
                finish[mine] = self.time + loads[i] + self.coster.run_times(name, one, idx[mine], self.sample)
        return idx, finish

    def _with_preloads(self, name: str, plan: ExecPlan, free: set[int]) -> Replicas | None:
        """Devices for launching `name` that use its preloaded engines first (None: it has none
        usable); the other replicas are placed on `free` devices."""
        pre = self.preloaded(name)
        groups = sorted((g for g, w in pre.items() if w.plan.tp == plan.tp and set(g) <= free),
                        key=lambda g: (pre[g].ready_at, g))[: plan.dp]
        if not groups:
            return None
        rest = plan.dp - len(groups)
        if rest:
            left = free - {d for g in groups for d in g}
            everything = set(range(self.coster.topology.num_devices))
            wanted = [("rest", ExecPlan(plan.tp, rest))]
            # other preloaded engines are kept when the rest fits elsewhere
            extra = (place(self.coster.topology, wanted, busy=everything - (left - self.preload_devices()))
                     or place(self.coster.topology, wanted, busy=everything - left))
            if extra is None:
                return None
            groups += list(extra["rest"])
        return tuple(sorted(tuple(g) for g in groups))

    # --- the transition --------------------------------------------------------------------

    def apply(self, choice: dict[str, Choice], until: set[str] | None = None) -> StageRecord:
        """Run one stage from the current time to its first finisher; return what happened.

        `until` replays a planned stage instead: it ends when all of those members have
        finished (in another sample of lengths, the planned first finisher may not be first)."""
        preloads = {n: c for n, c in choice.items() if isinstance(c, Preload)}
        choice = {n: c for n, c in choice.items() if not isinstance(c, Preload)}
        if not choice:
            raise InvalidStage("a stage needs at least one runnable node")
        runnable = set(self.runnable())
        for name, c in choice.items():
            if name not in runnable:
                raise InvalidStage(f"{name} is not runnable")
            if isinstance(c, Keep) and self.nodes[name].run is None:
                raise InvalidStage(f"{name} is not running, so it cannot keep its plan")
        for name in preloads:
            if not self.can_preload(name, choice):
                raise InvalidStage(f"{name} cannot be preloaded: it is runnable, done, or its inputs are not under way")
        keep = [n for n, c in choice.items() if isinstance(c, Keep)]
        launches = {n: c for n, c in choice.items() if isinstance(c, Launch)}
        busy = self.busy_devices(keep)
        prefer = {n: c.replicas for n, c in {**launches, **preloads}.items() if c.replicas is not None}
        pinned = {n: self.coster.pinned_replicas(n) for n in launches}
        prefer.update({n: r for n, r in pinned.items() if r is not None})
        # A launch with no devices asked for takes over a warm engine of its model and plan
        # when one is free, as the runtime would, or else its preloaded engines.
        claimed = {d for reps in prefer.values() for r in reps for d in r} | busy
        for n, c in launches.items():
            if n in prefer:
                continue
            for reps in self.warm_for(n, c.plan):
                devs = {d for r in reps for d in r}
                if not devs & claimed:
                    prefer[n] = reps
                    claimed |= devs
                    break
            else:
                reps = self._with_preloads(n, c.plan, set(range(self.coster.topology.num_devices)) - claimed)
                if reps is not None:
                    prefer[n] = reps
                    claimed |= {d for r in reps for d in r}
        wanted = [(n, c.plan) for n, c in launches.items()] + [(n, c.plan) for n, c in preloads.items()]
        # Other nodes' preloaded engines are kept when the stage fits elsewhere.
        assignment = None
        spare = self.preload_devices() - claimed
        if spare:
            assignment = place(self.coster.topology, wanted, busy=busy | spare, prefer=prefer)
        if assignment is None:
            assignment = place(self.coster.topology, wanted, busy=busy, prefer=prefer)
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
            loads = self.replica_loads(name, c.plan, reps)
            idx, finish = self._launch_finishes(name, c.plan, loads)
            prog.run = Run(c.plan, reps, self.time, float(loads.max(initial=0.0)), idx, finish)
            actions[name] = "start" if prog.launches == 0 else ("restart" if name in was_running else "resume")
            prog.launches += 1
        for name in keep:
            actions[name] = "continue"
        used = {d for n in choice for r in self.nodes[n].run.replicas for d in r}
        used |= {d for n in preloads for r in assignment[n] for d in r}
        self.warm = {reps: w for reps, w in self.warm.items()
                     if not used & {d for r in reps for d in r} and not (w.preload and w.node in launches)}
        preload_records = {}
        for name, c in preloads.items():
            one = ExecPlan(c.plan.tp, 1)
            load = self.coster.load_seconds(name, one)
            for group in assignment[name]:
                self.warm[(tuple(group),)] = Warm(self.coster.engine_key(name), one, name, self.time + load, preload=True)
            preload_records[name] = MemberRecord(c.plan, assignment[name], "preload", load, 0, 0, False)

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
        members.update(preload_records)
        record = StageRecord(self.time, end, ender, members)
        self.time = end
        self.records.append(record)
        return record
