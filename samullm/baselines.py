"""The heuristics people use, as policies on the same stage machine and cost model as SamuLLM.

A policy is asked at every decision point (start, and whenever a node finishes) which nodes run
now; all four keep running nodes where they are (they never move a node) and only decide what
starts on the devices that are free:

- sequential: one node at a time in dependency order, each with its fastest plan on up to all
  devices;
- even-split: as many runnable nodes at once as fit, the free devices divided among them as
  evenly as plans allow, each with its fastest plan on its share;
- largest-first: in the style of MuxServe's placement: biggest model first, each given a share
  of the free devices in proportion to its estimated work (its fastest plan on that share);
- one-per-device: every runnable node on its smallest feasible plan (one device for a model
  that fits one), started in dependency order as devices free up ("waves").
"""

from __future__ import annotations

from collections.abc import Callable

from samullm.errors import UserInputError
from samullm.plans import ExecPlan, place
from samullm.timeline import Choice, Keep, Launch, Timeline

Policy = Callable[[Timeline], dict[str, Choice]]


def _end(tl: Timeline, name: str, plan: ExecPlan) -> float:
    """Predicted run time of launching `name` with `plan` now; a launch takes over a warm
    engine of its model and plan when one is left (the runtime does), so it loads nothing."""
    _, rel = tl.launch_times(name, plan, estimate=True)
    load = 0.0 if tl.warm_for(name, plan) else tl.coster.load_seconds(name, plan)
    return load + float(rel.max(initial=0.0))


def fastest_plan(tl: Timeline, name: str, max_devices: int) -> ExecPlan | None:
    plans = [p for p in tl.coster.plans(name) if p.num_devices <= max_devices]
    if not plans:
        return None
    return min(plans, key=lambda p: (_end(tl, name, p), p.num_devices, p.tp))


def _min_devices(tl: Timeline, name: str) -> int:
    return min(p.num_devices for p in tl.coster.plans(name))


def _waiting(tl: Timeline) -> list[str]:
    return [n for n in tl.runnable() if tl.nodes[n].run is None]


def _fits(tl: Timeline, keep: list[str], launches: dict[str, ExecPlan]) -> bool:
    return place(tl.coster.topology, list(launches.items()), busy=tl.busy_devices(keep)) is not None


def _finish(tl: Timeline, launches: dict[str, ExecPlan]) -> dict[str, Choice]:
    choice: dict[str, Choice] = {n: Keep() for n in tl.running()}
    choice.update({n: Launch(p) for n, p in launches.items()})
    if not choice:
        raise UserInputError("no runnable node fits the free devices (a baseline cannot proceed)")
    return choice


def sequential(tl: Timeline) -> dict[str, Choice]:
    runnable = tl.runnable()
    if tl.running() or not runnable:  # nothing to start: let what runs finish
        return _finish(tl, {})
    name = runnable[0]
    return _finish(tl, {name: fastest_plan(tl, name, tl.coster.topology.num_devices)})


def _split(tl: Timeline, names: list[str], shares: list[float]) -> dict[str, ExecPlan]:
    """Give each node (in order) a device count near its share of the free devices, at least
    its minimum; the first ones that do not fit wait. Each runs its fastest plan on its count."""
    keep = tl.running()
    free = tl.coster.topology.num_devices - len(tl.busy_devices(keep))
    while names:
        total = sum(shares)
        counts = [max(_min_devices(tl, n), int(free * s / total)) for n, s in zip(names, shares, strict=True)]
        if sum(counts) <= free:
            # Hand out what rounding left over, first nodes first, where it buys a faster plan.
            spare = free - sum(counts)
            launches = {}
            for n, c in zip(names, counts, strict=True):
                plan = fastest_plan(tl, n, c + spare)
                spare += c - plan.num_devices
                launches[n] = plan
            for _ in range(len(launches)):
                if _fits(tl, keep, launches):
                    return launches
                # Fragmented devices: shrink the largest plan that can shrink.
                big = max(launches, key=lambda n: launches[n].num_devices)
                smaller = fastest_plan(tl, big, launches[big].num_devices - 1)
                if smaller is None:
                    break
                launches[big] = smaller
        names, shares = names[:-1], shares[:-1]
    return {}


def even_split(tl: Timeline, order: list[str] | None = None) -> dict[str, Choice]:
    """`order`: the waiting nodes to consider, in priority order (default: all, in dependency
    order)."""
    waiting = _waiting(tl) if order is None else order
    return _finish(tl, _split(tl, waiting, [1.0] * len(waiting)))


def largest_first(tl: Timeline) -> dict[str, Choice]:
    waiting = sorted(_waiting(tl), key=lambda n: -tl.coster.weight_bytes(n))
    # Estimated work: device-seconds of the node's smallest plan.
    work = []
    for n in waiting:
        plan = min(tl.coster.plans(n), key=lambda p: (p.num_devices, p.tp))
        work.append(plan.num_devices * _end(tl, n, plan))
    return _finish(tl, _split(tl, waiting, work))


def one_per_device(tl: Timeline) -> dict[str, Choice]:
    keep = tl.running()
    launches: dict[str, ExecPlan] = {}
    for name in _waiting(tl):
        smallest = min(p.num_devices for p in tl.coster.plans(name))
        plan = fastest_plan(tl, name, smallest)
        trial = {**launches, name: plan}
        if _fits(tl, keep, trial):
            launches = trial
    return _finish(tl, launches)


BASELINES: dict[str, Policy] = {
    "sequential": sequential,
    "even-split": even_split,
    "largest-first": largest_first,
    "one-per-device": one_per_device,
}


def run_policy(tl: Timeline, policy: Policy) -> list[tuple[dict[str, Choice], set[str]]]:
    """Advance `tl` to the end under `policy`; return each stage's choice and finishers."""
    stages = []
    while not tl.done:
        choice = policy(tl)
        record = tl.apply(choice)
        stages.append((choice, {n for n, m in record.members.items() if m.finishes}))
    return stages


def baseline_names() -> list[str]:
    return list(BASELINES)


def get_baseline(name: str) -> Policy:
    if name not in BASELINES:
        raise UserInputError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]

