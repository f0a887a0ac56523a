"""Stage planning: the paper's greedy, made less myopic by rollouts (a pilot method).

The paper's greedy picks, from the current state, the candidate stage with the best simulated
throughput (work finished per second, engine loads included), advances to its first finisher,
and repeats (`candidates.py`). Throughput alone is myopic: it does not see that a node started
late becomes the tail, that a judge waits for every answer, or that a node of the same model
could take over a warm engine. So the planner keeps an incumbent (the best complete schedule
seen) and, at every decision point, tries the `lookahead` best stages by throughput plus the
stages a few cheap heuristics would pick; it finishes each with every rollout heuristic (the
throughput greedy itself; "fill": even split, then idle devices to the node predicted to finish
last; "fill" in critical-path order; a tuned list schedule) and keeps any schedule that ends
sooner. Then it takes the incumbent's next stage. The incumbent is seeded with the best of the
baselines' own schedules (so a plan is never predicted slower than any baseline) and with the
list schedule, whose plans and order a local search has tuned (`list_scheduling.py`: it sees
the packing problem of an ensemble as a whole).

The search runs on one sample of output lengths with subsampled simulations (see
`SimulationCoster.max_requests`); the chosen stage sequence is then replayed over K samples
(`estimates.py`) for the reported estimate and its spread.

Preloading (`PlannerOptions.preload`, off by default: the runtime cannot run it yet): at every
decision point the search also tries each candidate stage plus loading a waiting node's engines
(one per replica of its smallest TP) on the devices the stage leaves idle, e.g. a judge's while
the last answers are produced; a DP launch then starts its preloaded replicas at once and gives
them more rows (`Timeline._launch_finishes`). A preload is kept only when predicted to gain more
than `trust_margin`.

Re-planning (`plan(app, node, state)`) starts from what the runtime reports. A running node is
moved only when that pays: the search runs twice, once free and once keeping every running node
in the first stage, and the free plan wins only if it is predicted to finish earlier by more
than `move_margin` (a fraction of the remaining time); its own reload and lost in-flight work
are inside both predictions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from samullm.baselines import BASELINES, even_split, get_baseline, run_policy
from samullm.candidates import WorkScale, best_stages, node_options
from samullm.costing import Coster, SimulationCoster, build_coster
from samullm.errors import UserInputError
from samullm.estimates import PlannedStage, build_schedule
from samullm.graph import Application
from samullm.list_scheduling import improve
from samullm.plans import ExecPlan, check_placement, place
from samullm.schedule import Schedule
from samullm.state import PlannerState
from samullm.timeline import Choice, InvalidStage, Keep, Launch, Preload, Timeline, Warm


@dataclass(frozen=True)
class PlannerOptions:
    """lookahead: best-throughput stages tried per step; estimate_samples: K samples of the
    reported estimate (0: report the search sample's timing, for quick re-plans); portfolio:
    seed the search with the baselines' schedules; move_margin: see the module docstring;
    trust_margin: a searched schedule replaces the best baseline's only when predicted faster by
    more than this fraction (the search costs one sample of output lengths: smaller gains are
    mostly that sample's luck, e.g. which DP replica drew the long outputs); preload: also try
    stages that load a waiting node's engines on devices the stage leaves idle (`with_preloads`;
    the runtime cannot run such plans yet, so only `bench planner --preload` turns it on)."""

    lookahead: int = 3
    estimate_samples: int = 4
    portfolio: bool = True
    move_margin: float = 0.02
    trust_margin: float = 0.01
    preload: bool = False  # try preloading waiting nodes on idle devices (the runtime cannot yet)
    seed: int = 0
    reuse_engines: bool = True  # see build_coster


@dataclass
class SearchResult:
    stages: list[PlannedStage]
    makespan: float  # on the search sample, fast timing
    method: str


def _finishers(record) -> set[str]:
    return {n for n, m in record.members.items() if m.finishes}


def _key(choice: dict[str, Choice]) -> tuple:
    return tuple(sorted((n, repr(c)) for n, c in choice.items()))


def _step(tl: Timeline, scales: WorkScale, top: int, required: set[str] = frozenset()):
    """The `top` best stages by throughput (the paper's criterion)."""
    options = {}
    for name in tl.runnable():
        opts = node_options(tl, name, scales)
        if name in required:
            opts = [o for o in opts if isinstance(o.choice, Keep)]
        options[name] = opts
    return best_stages(tl, options, top=top, required=required)


def throughput_greedy(scales: WorkScale) -> Callable[[Timeline], dict[str, Choice]]:
    """The paper's greedy as a policy: always the stage with the best throughput."""

    def policy(tl: Timeline) -> dict[str, Choice]:
        cands = _step(tl, scales, 1)
        if not cands:
            raise UserInputError("no runnable node fits on the free devices")
        return cands[0].choice

    return policy


def _end_of(tl: Timeline, name: str, choice: Choice) -> float:
    if isinstance(choice, Keep):
        return tl.nodes[name].run.end
    if not choice.replicas:
        return tl.estimated_end(name, choice.plan)
    _, rel = tl.launch_times(name, choice.plan, estimate=True)
    return tl.time + tl.load_for(name, choice.plan, choice.replicas) + float(rel.max(initial=0.0))


def _devices(tl: Timeline, name: str, choice: Choice) -> int:
    return (tl.nodes[name].run.plan if isinstance(choice, Keep) else choice.plan).num_devices


def _defer_duplicates(tl: Timeline) -> list[str]:
    """Runnable nodes with the engine of a running or earlier runnable node go last: started
    later, they can take that engine over warm instead of loading their own. A waiting node
    whose engine is running and will be free before the node could load its own waits for it."""
    ends = {}
    for n in tl.running():
        key = tl.coster.engine_key(n)
        ends[key] = min(ends.get(key, float("inf")), tl.nodes[n].run.end)
    seen = set(ends)
    first, later = [], []
    for name in tl.runnable():
        key = tl.coster.engine_key(name)
        if tl.nodes[name].run is None and key in ends:
            least_load = min(tl.coster.load_seconds(name, p) for p in tl.coster.plans(name))
            if ends[key] <= tl.time + least_load:
                continue  # its engine frees up sooner than it could load one
        if tl.nodes[name].run is None:
            (later if key in seen else first).append(name)
        seen.add(key)
    return first + later


def _bottom_levels(tl: Timeline) -> dict[str, float]:
    """Per unfinished node: its shortest run on one device (load included) plus the longest
    such chain of nodes downstream of it, the classic list-scheduling priority."""
    coster = tl.coster
    own = {}
    for name, prog in tl.nodes.items():
        if prog.finished:
            own[name] = 0.0
            continue
        plan = min(coster.plans(name), key=lambda p: (p.num_devices, p.tp))
        _, rel = tl.launch_times(name, plan, estimate=True)
        own[name] = coster.load_seconds(name, plan) + float(rel.max(initial=0.0))
    level: dict[str, float] = {}
    for name in reversed(coster.nodes()):  # downstream nodes first
        below = [level[d] for d in coster.nodes() if name in coster.upstream(d) and d in level]
        level[name] = own[name] + max(below, default=0.0)
    return level


def fill(tl: Timeline, critical_path: bool = False) -> dict[str, Choice]:
    """Rollout heuristic: start waiting nodes on an even split of the free devices, then give
    devices still idle to the member predicted to finish last, relaunching it on a plan with
    more devices when that finishes it sooner (its load and lost in-flight work included).
    `critical_path`: waiting nodes with the longest chain ahead of them start first."""
    order = _defer_duplicates(tl)
    if critical_path:
        level = _bottom_levels(tl)
        order = sorted(order, key=lambda n: -level[n])
    choice = even_split(tl, order)
    num = tl.coster.topology.num_devices
    for _ in range(num):
        free = num - sum(_devices(tl, n, c) for n, c in choice.items())
        if free <= 0:
            break
        ends = {n: _end_of(tl, n, c) for n, c in choice.items()}
        latest = max(ends, key=lambda n: (ends[n], n))
        have = _devices(tl, latest, choice[latest])
        best, best_end = None, ends[latest]
        for plan in tl.coster.plans(latest):
            if have < plan.num_devices <= have + free:
                end = _end_of(tl, latest, Launch(plan))
                if end < best_end - 1e-9:
                    best, best_end = plan, end
        if best is None:
            break
        trial = {**choice, latest: Launch(best)}
        if place(tl.coster.topology, [(n, c.plan) for n, c in trial.items() if isinstance(c, Launch)],
                 busy=tl.busy_devices([n for n, c in trial.items() if isinstance(c, Keep)])) is None:
            break
        choice = trial
    return choice


def with_preloads(tl: Timeline, choice: dict[str, Choice]) -> list[dict[str, Choice]]:
    """Variants of `choice` that also preload a waiting node on the devices it leaves idle:
    the node whose inputs this stage is producing loads its engines (one per replica of its
    smallest TP) while they run, and starts computing as soon as they are done."""
    num = tl.coster.topology.num_devices
    idle = num - sum(_devices(tl, n, c) for n, c in choice.items()) - len(tl.preload_devices())
    if idle <= 0:
        return []
    out = []
    for name in tl.nodes:
        if not tl.can_preload(name, choice):
            continue
        tp = min(p.tp for p in tl.coster.plans(name))
        if idle // tp:
            out.append({**choice, name: Preload(ExecPlan(tp, idle // tp))})
    return out


# Heuristics that finish a schedule from any state (the baselines only seed the search: as
# rollouts from later states they did not find better schedules on the paper's workloads).
ROLLOUTS: dict[str, Callable[[Timeline], dict[str, Choice]]] = {
    "fill": fill,
    "fill-critical-path": lambda tl: fill(tl, critical_path=True),
}


@dataclass
class Incumbent:
    stages: list[PlannedStage]
    makespan: float
    found_by: str


def _roll(tl: Timeline, policy) -> tuple[float, list[PlannedStage]]:
    stages = run_policy(tl, policy)
    return tl.time, stages


def search(
    start: Callable[[], Timeline], options: PlannerOptions, keep_first: set[str] = frozenset()
) -> SearchResult:
    """Best stage sequence from `start()` (a fresh timeline per call) by a pilot method.

    The incumbent is the best complete schedule seen. At each decision point the candidates are
    the `lookahead` best stages by throughput (the paper's greedy) and the stages the rollout
    heuristics would choose; each is applied and finished by every rollout heuristic, and any
    schedule that ends sooner becomes the incumbent. Then the incumbent's next stage is taken.
    The result is never predicted slower than any rollout from the start (the baselines among
    them). `keep_first`: nodes that must keep their running plan in the first stage."""
    scales = WorkScale()
    root = start()
    policies = dict(ROLLOUTS)
    policies["throughput"] = throughput_greedy(scales)
    incumbent = Incumbent([], float("inf"), "")
    first_ok = (lambda ch: all(isinstance(ch.get(n), Keep) for n in keep_first)) if keep_first else (lambda ch: True)
    root_policies = dict(policies)
    if options.portfolio:
        root_policies.update(BASELINES)
    baseline: Incumbent | None = None  # the best baseline's schedule from the start
    listed = improve(start)
    if listed is not None:
        value, stages, list_policy = listed
        policies["list"] = list_policy
        if not keep_first or first_ok(stages[0][0]):
            incumbent = Incumbent(stages, value, "list")
    for name, policy in root_policies.items():
        trial = root.copy()
        try:
            first = policy(trial)
            if not first_ok(first):
                continue
            value, stages = _roll(trial, policy)
        except (UserInputError, InvalidStage):
            continue
        if name in BASELINES and (baseline is None or value < baseline.makespan):
            baseline = Incumbent(stages, value, name)
        if value < incumbent.makespan:
            incumbent = Incumbent(stages, value, name)
    tl = root
    done: list[PlannedStage] = []
    step = 0
    while not tl.done:
        required = keep_first if step == 0 else set()
        cands: dict[tuple, dict[str, Choice]] = {}
        for cand in _step(tl, scales, options.lookahead, required):
            cands.setdefault(_key(cand.choice), cand.choice)
        for name, policy in policies.items():
            if name == "throughput":
                continue  # its stage is the first throughput candidate already
            try:
                ch = policy(tl)
            except UserInputError:
                continue
            if step > 0 or first_ok(ch):
                cands.setdefault(_key(ch), ch)
        if options.preload:
            for ch in list(cands.values()):
                for variant in with_preloads(tl, ch):
                    cands.setdefault(_key(variant), variant)
        for choice in cands.values():
            child = tl.copy()
            try:
                record = child.apply(choice)
            except InvalidStage:
                continue
            head = done + [(choice, _finishers(record))]
            # A preload is a bet on when its inputs will be ready: taken only when predicted to
            # gain more than the model's own error (trust_margin), like a searched schedule.
            bet = options.trust_margin if any(isinstance(c, Preload) for c in choice.values()) else 0.0
            for name, policy in policies.items():
                if name == "throughput" and len(cands) > 1 and choice is not next(iter(cands.values())):
                    continue  # the costly greedy rollout only from the best-throughput stage
                trial = child.copy()
                try:
                    value, tail = _roll(trial, policy)
                except (UserInputError, InvalidStage):
                    continue
                if value < incumbent.makespan * (1.0 - bet) - 1e-9:
                    incumbent = Incumbent(head + tail, value, "samullm")
        if not incumbent.stages:
            raise UserInputError("no runnable node fits on the free devices")
        nxt_choice, _ = incumbent.stages[len(done)]
        record = tl.apply(nxt_choice)
        done.append((nxt_choice, _finishers(record)))
        step += 1
    if baseline is not None and tl.time >= baseline.makespan * (1.0 - options.trust_margin):
        return SearchResult(baseline.stages, baseline.makespan, f"samullm({baseline.found_by})")
    method = "samullm" if incumbent.found_by in ("samullm", "throughput", "list", *ROLLOUTS) else f"samullm({incumbent.found_by})"
    return SearchResult(done, tl.time, method)


def policy_search(tl: Timeline, name: str) -> SearchResult:
    stages = run_policy(tl, get_baseline(name))
    return SearchResult(stages, tl.time, name)


def search_with_running(start: Callable[[], Timeline], options: PlannerOptions, running: set[str]) -> SearchResult:
    """Moves running nodes only when that is predicted to pay by more than `move_margin`."""
    best = search(start, options)
    if running:
        kept = search(start, options, keep_first=running)
        if best.makespan >= kept.makespan * (1.0 - options.move_margin):
            best = kept
    return best


def make_schedule(
    coster: Coster,
    start: Callable[[int, bool], Timeline],
    *,
    method: str,
    options: PlannerOptions,
    application: str,
    node_spec: str,
    running: set[str] = frozenset(),
) -> Schedule:
    """Search (SamuLLM) or follow a baseline (`method` = its name), then estimate over K samples."""
    t0 = time.perf_counter()
    if method == "samullm":
        result = search_with_running(lambda: start(0, True), options, running)
    else:
        result = policy_search(start(0, True), method)
    planning = time.perf_counter() - t0
    # estimate_samples=0: no separate estimate; the search sample's own timing is reported.
    exact = options.estimate_samples > 0
    schedule = build_schedule(
        coster,
        lambda s: start(s, not exact),
        result.stages,
        max(1, options.estimate_samples),
        application=application,
        node_spec=node_spec,
        method=method,
        seed=options.seed,
    )
    schedule.planning_seconds = planning
    if not exact:
        schedule.samples = 0
    if result.method.startswith("samullm("):
        schedule.notes.append(f"the {result.method[8:-1]} baseline's schedule was predicted fastest and is used")
    return schedule


# Subsample sizes per run (see SimulationCoster.max_requests): the search's, and the estimate's
# (runs of up to 2,500 requests are simulated whole; larger ones within about 1%).
SEARCH_MAX_REQUESTS = 1500
ESTIMATE_MAX_REQUESTS = 2500


def _initial(coster, state: PlannerState | None):
    """Running nodes and warm engines of `state` in the timeline's terms, checked."""
    running, warm = {}, {}
    if state is None:
        return running, warm
    topo = coster.topology
    names = set(coster.nodes())
    for name in list(state.finished) + list(state.done_rows):
        if name not in names:
            raise UserInputError(f"state names unknown node {name!r}")
    assignment = {}
    for r in state.running:
        if r.node not in names:
            raise UserInputError(f"state: running node {r.node!r} is not in the application")
        reps = tuple(tuple(sorted(g)) for g in r.replicas)
        if len(reps) != r.dp or any(len(g) != r.tp for g in reps):
            raise UserInputError(f"state: running node {r.node!r} has {len(reps)} replicas for TP{r.tp} x DP{r.dp}")
        running[r.node] = (ExecPlan(r.tp, r.dp), reps)
        assignment[r.node] = reps
    try:
        check_placement(topo, assignment)
    except AssertionError as err:
        raise UserInputError(f"state: running nodes' devices are not valid: {err}") from None
    for w in state.warm:
        if w.node not in names:
            raise UserInputError(f"state: warm engine of unknown node {w.node!r}")
        reps = tuple(tuple(sorted(g)) for g in w.replicas)
        if w.preloaded:
            for group in reps:  # one engine per replica
                warm[(group,)] = Warm(coster.engine_key(w.node), ExecPlan(w.tp, 1), w.node, w.ready_in, preload=True)
        else:
            warm[reps] = Warm(coster.engine_key(w.node), ExecPlan(w.tp, w.dp), w.node)
    return running, warm


def plan(
    app: Application,
    node: str | object,
    state: PlannerState | None = None,
    *,
    method: str = "samullm",
    options: PlannerOptions = PlannerOptions(),
    coster: SimulationCoster | None = None,
) -> Schedule:
    """Plan `app` on `node` (a preset name, node file, "cpu"/"gpu", or a costmodel NodeSpec),
    from `state` when the application is already partly done. `method` = "samullm" or a
    baseline's name. Returns the stage schedule with its K-sample estimate."""
    if method != "samullm":
        get_baseline(method)  # unknown names fail before any work
    t0 = time.perf_counter()
    if isinstance(node, str):
        from costmodel.hardware import resolve_node

        node_spec = resolve_node(node)
    else:
        node_spec = node
    base = coster or build_coster(app, node_spec, state, seed=options.seed, reuse_engines=options.reuse_engines)
    fast = base.with_max_requests(SEARCH_MAX_REQUESTS)
    estimate = base.with_max_requests(ESTIMATE_MAX_REQUESTS)
    running, warm = _initial(base, state)

    def start(sample: int, approx: bool) -> Timeline:
        c = fast if approx else estimate
        return Timeline.start(c, sample, running=running, warm=warm)

    schedule = make_schedule(
        estimate, start, method=method, options=options, application=app.name,
        node_spec=getattr(node_spec, "name", "node"), running=set(running),
    )
    schedule.replanned_from_state = state is not None
    schedule.planning_seconds = time.perf_counter() - t0
    return schedule
