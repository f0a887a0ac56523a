"""List scheduling with chosen plans, improved by local search: a seed for the stage search.

Stage-by-stage greedy choices rarely see the whole packing problem of an ensemble: eight models
of unequal work on eight devices finish together only if the long ones get more devices from
the start and the short ones share devices one after another, each loading once. This module
looks for that directly: every node gets a fixed plan and a priority; a list scheduler starts
runnable nodes in priority order as soon as their plan's devices are free (never moving a
running node, so no work is lost and every node loads once); a local search then widens the
plan of one node at a time, moves it earlier in the order, or puts a chain of nodes of one
engine on one device count together (with the plan of the node consuming it), or lets the
policy relaunch the member finishing last onto devices left idle at the end, keeping any
change that finishes sooner on the cost model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from samullm.baselines import run_policy
from samullm.errors import UserInputError
from samullm.estimates import PlannedStage
from samullm.plans import ExecPlan, place
from samullm.timeline import Choice, InvalidStage, Keep, Launch, Timeline


SMALL = 6  # up to this many nodes, the local search tries every earlier position for a node


def _run_time(tl: Timeline, name: str, plan: ExecPlan) -> float:
    _, rel = tl.launch_times(name, plan, estimate=True)
    load = 0.0 if tl.warm_for(name, plan) else tl.coster.load_seconds(name, plan)
    return load + float(rel.max(initial=0.0))


def fastest_with(tl: Timeline, name: str, devices: int) -> ExecPlan | None:
    plans = [p for p in tl.coster.plans(name) if p.num_devices == devices]
    return min(plans, key=lambda p: _run_time(tl, name, p)) if plans else None


@dataclass(frozen=True)
class ListPolicy:
    """Start runnable nodes in `order` on their `plans` whenever the devices are free."""

    plans: dict[str, ExecPlan]
    order: tuple[str, ...]
    restart_tail: bool = False  # see _restart_tail

    def __call__(self, tl: Timeline) -> dict[str, Choice]:
        choice: dict[str, Choice] = {n: Keep() for n in tl.running()}
        launches: dict[str, ExecPlan] = {}
        busy = tl.busy_devices(list(choice))
        runnable = set(tl.runnable())
        engine_free_at = {}
        for n in tl.running():
            key = tl.coster.engine_key(n)
            engine_free_at[key] = min(engine_free_at.get(key, float("inf")), tl.nodes[n].run.end)
        for name in self.order:
            if name not in runnable or tl.nodes[name].run is not None:
                continue
            key_free = engine_free_at.get(tl.coster.engine_key(name))
            if key_free is not None and key_free <= tl.time + tl.coster.load_seconds(name, self.plans[name]):
                continue  # an engine of its model frees up before it could load its own: wait for it
            plan = self.plans[name]
            trial = {**launches, name: plan}
            if place(tl.coster.topology, list(trial.items()), busy=busy) is not None:
                launches = trial
        if not choice and not launches:
            # Nothing fits as planned (devices fragmented): start the first runnable node on
            # the largest of its plans that fits.
            for name in self.order:
                if name in runnable:
                    for plan in sorted(tl.coster.plans(name), key=lambda p: -p.num_devices):
                        if place(tl.coster.topology, [(name, plan)], busy=busy) is not None:
                            launches = {name: plan}
                            break
                if launches:
                    break
        if not choice and not launches:
            raise UserInputError("no runnable node fits on the free devices")
        launches = self._widen(tl, launches, busy, runnable)
        choice.update({n: Launch(p) for n, p in launches.items()})
        if self.restart_tail and not [n for n in runnable if n not in choice]:
            choice = _restart_tail(tl, choice)
        return choice

    def _widen(self, tl: Timeline, launches: dict[str, ExecPlan], busy: set[int], runnable: set[str]):
        """Devices left idle with no other node waiting for them go to the nodes starting now
        (the one predicted to finish last first), when a wider plan finishes it sooner."""
        waiting = [n for n in runnable if tl.nodes[n].run is None and n not in launches]
        if waiting or not launches:
            return launches
        num = tl.coster.topology.num_devices
        while True:
            free = num - len(busy) - sum(p.num_devices for p in launches.values())
            if free <= 0:
                return launches
            ends = {n: _run_time(tl, n, p) for n, p in launches.items()}
            last = max(ends, key=lambda n: (ends[n], n))
            have = launches[last].num_devices
            better = [p for p in tl.coster.plans(last) if have < p.num_devices <= have + free]
            best = min(better, key=lambda p: _run_time(tl, last, p), default=None)
            if best is None or _run_time(tl, last, best) >= ends[last]:
                return launches
            trial = {**launches, last: best}
            if place(tl.coster.topology, list(trial.items()), busy=busy) is None:
                return launches
            launches = trial


def _end(tl: Timeline, name: str, choice: Choice) -> float:
    if isinstance(choice, Keep):
        return tl.nodes[name].run.end
    return tl.time + _run_time(tl, name, choice.plan)


def _restart_tail(tl: Timeline, choice: dict[str, Choice]) -> dict[str, Choice]:
    """Devices idle with nothing waiting for them: while the member that finishes last is a
    running node and relaunching it on a plan using the idle devices too finishes it sooner
    (its load and lost in-flight work included), relaunch it. Without this the tail of an
    ensemble runs on one device while the others wait for the judge."""
    num = tl.coster.topology.num_devices
    used = {n: (tl.nodes[n].run.plan if isinstance(c, Keep) else c.plan).num_devices for n, c in choice.items()}
    for _ in range(num):
        free = num - sum(used.values())
        if free <= 0 or not choice:
            return choice
        ends = {n: _end(tl, n, c) for n, c in choice.items()}
        last = max(ends, key=lambda n: (ends[n], n))
        if not isinstance(choice[last], Keep):
            return choice
        have = used[last]
        plans = [p for p in tl.coster.plans(last) if have < p.num_devices <= have + free]
        best = min(plans, key=lambda p: _end(tl, last, Launch(p)), default=None)
        if best is None or _end(tl, last, Launch(best)) >= ends[last] - 1e-9:
            return choice
        trial = {**choice, last: Launch(best)}
        keep = [n for n, c in trial.items() if isinstance(c, Keep)]
        launches = [(n, c.plan) for n, c in trial.items() if isinstance(c, Launch)]
        if place(tl.coster.topology, launches, busy=tl.busy_devices(keep)) is None:
            return choice
        choice, used = trial, {**used, last: best.num_devices}
    return choice


@dataclass
class _Best:
    """The local search's incumbent."""

    policy: ListPolicy
    makespan: float
    stages: list[PlannedStage]

    def consider(self, start: Callable[[], Timeline], cands: list[ListPolicy]) -> bool:
        """Take each candidate that finishes sooner than the incumbent; True if any did."""
        gained = False
        for cand in cands:
            try:
                t, stages = _evaluate(start, cand)
            except (UserInputError, InvalidStage):
                continue
            if t < self.makespan - 1e-9:
                self.policy, self.makespan, self.stages = cand, t, stages
                gained = True
        return gained


def _evaluate(start: Callable[[], Timeline], policy: ListPolicy) -> tuple[float, list[PlannedStage]]:
    tl = start()
    stages = run_policy(tl, policy)
    return tl.time, stages


def improve(start: Callable[[], Timeline], max_rounds: int = 4) -> tuple[float, list[PlannedStage], ListPolicy] | None:
    """Local search over plans and order; returns (makespan, stages, policy) of the best found."""
    root = start()
    names = [n for n, p in root.nodes.items() if not p.finished and p.run is None]
    if not names:
        return None
    plans = {}
    for n in names:
        least = min(p.num_devices for p in root.coster.plans(n))
        plans[n] = fastest_with(root, n, least)
    own = {n: _run_time(root, n, plans[n]) * plans[n].num_devices for n in names}
    # Priority: the longest chain of work below a node first (critical path), then its own work.
    below: dict[str, float] = {}
    for n in reversed(root.coster.nodes()):
        down = [below[d] for d in root.coster.nodes() if n in root.coster.upstream(d) and d in below]
        below[n] = own.get(n, 0.0) + max(down, default=0.0)
    order = tuple(sorted(names, key=lambda n: -below[n]))
    try:
        best = ListPolicy(plans, order)
        best_time, best_stages = _evaluate(start, best)
    except (UserInputError, InvalidStage):
        return None
    num = root.coster.topology.num_devices
    groups = _engine_groups(root, names)
    found = _Best(best, best_time, best_stages)
    for _ in range(max_rounds):
        improved = False
        for n in names:
            improved |= found.consider(start, _widen_moves(root, found.policy, n, num)
                                       + _order_moves(found.policy, n, len(names)))
        # Relaunching the last member onto idle devices at the end (or not).
        improved |= found.consider(start, [replace(found.policy, restart_tail=not found.policy.restart_tail)])
        for group in groups:
            improved |= found.consider(start, _group_moves(root, found.policy, group, num))
        if not improved:
            break
    return found.makespan, found.stages, found.policy


def _widen_moves(root: Timeline, best: ListPolicy, n: str, num: int) -> list[ListPolicy]:
    """`n` one step wider (the next device count with a plan)."""
    have = best.plans[n].num_devices
    for d in range(have + 1, num + 1):
        wider = fastest_with(root, n, d)
        if wider is not None:
            return [replace(best, plans={**best.plans, n: wider})]
    return []


def _plan_moves(root: Timeline, best: ListPolicy, n: str, num: int) -> list[ListPolicy]:
    """`n` on the fastest plan of every other device count: one step wider alone rarely pays
    when the right count is far (a 70B evaluator from TP2 to TP4 beside a chain)."""
    have = best.plans[n].num_devices
    moves = []
    for d in sorted(range(1, num + 1), key=lambda d: (d < have, abs(d - have))):
        plan = fastest_with(root, n, d) if d != have else None
        if plan is not None:
            moves.append(replace(best, plans={**best.plans, n: plan}))
    return moves


def _order_moves(best: ListPolicy, n: str, count: int) -> list[ListPolicy]:
    """Move `n` earlier: every position for small applications, one step otherwise."""
    i = best.order.index(n)
    targets = range(i) if count <= SMALL else [i - 1] if i > 0 else []
    moves = []
    for j in targets:
        order = list(best.order)
        order.insert(j, order.pop(i))
        moves.append(replace(best, order=tuple(order)))
    return moves


def _engine_groups(root: Timeline, names: list[str]) -> list[list[str]]:
    """Chains of nodes of one engine (the steps of a summariser): on one plan each takes the
    previous one's warm engine, a change no single-node move finds when each step alone gains
    nothing. Nodes of one engine linked by a dependency form a group."""
    coster = root.coster
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for n in names:
        for u in coster.upstream(n):
            if u in parent and coster.engine_key(u) == coster.engine_key(n):
                parent[find(u)] = find(n)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return [g for g in groups.values() if len(g) > 1]


def _group_moves(root: Timeline, best: ListPolicy, group: list[str], num: int) -> list[ListPolicy]:
    """The group on one device count, alone and with each plan move of a node right below it
    (a chain narrowed to leave room for its consumer wants that consumer wider, and so on)."""
    below = [n for n in best.plans if n not in group and any(u in group for u in root.coster.upstream(n))]
    moves = []
    for d in range(1, num + 1):
        plans = {n: fastest_with(root, n, d) for n in group}
        if any(p is None for p in plans.values()):
            continue
        moved = replace(best, plans={**best.plans, **plans})
        if moved.plans != best.plans:
            moves.append(moved)
        for n in below:
            moves += _plan_moves(root, moved, n, num)
    return moves
