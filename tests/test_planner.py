"""Stage semantics and the greedy planner, on costs computable on paper (tests/toy.py).

Toy costs: a node's requests run one after another; request k of a run finishes at
(k + 1) * unit / speed after the load, speed = dp * tp**alpha.
"""

from __future__ import annotations

import random

import pytest

from samullm.baselines import BASELINES, run_policy
from samullm.planner import PlannerOptions, search
from samullm.plans import ExecPlan, check_placement
from samullm.timeline import InvalidStage, Keep, Launch, Timeline
from tests.toy import ToyCoster, ToyNode, pairs

TP1 = Launch(ExecPlan(1, 1))
DP2 = Launch(ExecPlan(1, 2))


def test_stage_ends_at_first_finisher_and_others_carry_on():
    c = ToyCoster({"a": ToyNode(4), "b": ToyNode(2)}, pairs(2))
    tl = Timeline.start(c, 0)
    rec = tl.apply({"a": TP1, "b": TP1})
    assert (rec.start, rec.end, rec.ender) == (0.0, 2.0, "b")
    assert rec.members["a"].done_after == 2 and not rec.members["a"].finishes
    assert rec.members["b"].finishes and tl.nodes["b"].finished
    rec = tl.apply({"a": Keep()})
    assert rec.members["a"].load == 0.0 and rec.end == 4.0  # kept: no reload, nothing lost
    assert tl.done


def test_relaunch_pays_load_and_restarts_unfinished_requests():
    # b finishes at t=3 (load 1 + 2 requests); a (2 of 4 done) moves to DP2: load 1, then its
    # 2 remaining requests at speed 2 finish 0.5 s apart
    c = ToyCoster({"a": ToyNode(4, load=1.0), "b": ToyNode(2, load=1.0)}, pairs(2))
    tl = Timeline.start(c, 0)
    rec = tl.apply({"a": TP1, "b": TP1})
    assert rec.end == 3.0  # load 1 + 2 requests
    rec = tl.apply({"a": DP2})
    assert rec.members["a"].action == "restart" and rec.members["a"].load == 1.0
    assert rec.end == pytest.approx(3.0 + 1.0 + 1.0)


def test_planner_relaunches_only_when_it_pays():
    cheap = ToyCoster({"a": ToyNode(8), "b": ToyNode(2)}, pairs(2))
    dear = ToyCoster({"a": ToyNode(8, load=5.0), "b": ToyNode(2, load=5.0)}, pairs(2))
    r = search(lambda: Timeline.start(cheap, 0), PlannerOptions())
    assert r.makespan == pytest.approx(5.0)  # all work (10 units) on 2 devices
    r = search(lambda: Timeline.start(dear, 0), PlannerOptions())
    # loads of 5 s: a and b side by side (a ends at 5 + 8) beats a on DP2 then b (5 + 4 + 5 + 1)
    # and beats moving a to DP2 when b ends at 7 (7 + 5 + 6 / 2)
    assert r.makespan == pytest.approx(13.0)


def test_dependencies_wait_for_upstream():
    c = ToyCoster({"a": ToyNode(2), "j": ToyNode(1, deps=("a",))}, pairs(2))
    tl = Timeline.start(c, 0)
    assert tl.runnable() == ["a"]
    with pytest.raises(InvalidStage):
        tl.apply({"j": TP1})
    tl.apply({"a": DP2})
    assert tl.runnable() == ["j"]


def test_keep_requires_a_running_node_and_devices_must_fit():
    c = ToyCoster({"a": ToyNode(2), "b": ToyNode(2), "c": ToyNode(2)}, pairs(2))
    tl = Timeline.start(c, 0)
    with pytest.raises(InvalidStage):
        tl.apply({"a": Keep()})
    with pytest.raises(InvalidStage):
        tl.apply({"a": TP1, "b": TP1, "c": TP1})


def test_warm_engine_is_taken_over_without_load():
    c = ToyCoster({"a": ToyNode(2, load=3.0), "b": ToyNode(2, load=3.0, deps=("a",))}, pairs(2))
    c.engine_key = lambda node: "same-model"  # a and b share model and options
    tl = Timeline.start(c, 0)
    rec = tl.apply({"a": TP1})
    reps = rec.members["a"].replicas
    rec = tl.apply({"b": Launch(ExecPlan(1, 1), reps)})
    assert rec.members["b"].load == 0.0


def _random_instance(rng: random.Random) -> ToyCoster:
    k = rng.randint(2, 5)
    names = [f"n{i}" for i in range(k)]
    spec = {}
    for i, name in enumerate(names):
        deps = tuple(d for d in names[:i] if rng.random() < 0.3)
        spec[name] = ToyNode(rng.randint(2, 12), unit=rng.choice([0.5, 1, 2]), load=rng.choice([0, 0.5, 2]),
                             deps=deps, min_tp=rng.choice([1, 1, 2]), size=rng.randint(1, 9))
    return ToyCoster(spec, pairs(rng.choice([2, 4])), alpha=rng.choice([0.5, 0.8, 0.95]))


@pytest.mark.parametrize("seed", range(12))
def test_planner_never_worse_than_any_baseline(seed):
    c = _random_instance(random.Random(seed))
    r = search(lambda: Timeline.start(c, 0), PlannerOptions())
    for name, policy in BASELINES.items():
        tl = Timeline.start(c, 0)
        run_policy(tl, policy)
        assert r.makespan <= tl.time + 1e-9, name


@pytest.mark.parametrize("seed", range(6))
def test_planned_stages_never_double_book_devices(seed):
    c = _random_instance(random.Random(100 + seed))
    r = search(lambda: Timeline.start(c, 0), PlannerOptions())
    tl = Timeline.start(c, 0)
    for choice, _ in r.stages:
        rec = tl.apply(choice)
        check_placement(c.topology, {n: m.replicas for n, m in rec.members.items()})
    assert tl.done and tl.time == pytest.approx(r.makespan)


def test_replan_from_running_state_keeps_finished_work():
    c = ToyCoster({"a": ToyNode(4), "b": ToyNode(4)}, pairs(2))
    # a is running on device 0 (its coster already excludes the rows it finished)
    start = lambda: Timeline.start(c, 0, running={"a": (ExecPlan(1, 1), ((0,),))})  # noqa: E731
    tl = start()
    assert tl.nodes["a"].run is not None and tl.nodes["a"].done.sum() == 0
    r = search(start, PlannerOptions())
    first, _ = r.stages[0]
    assert isinstance(first.get("a"), Keep)  # keeping a costs nothing and moving gains nothing here
    assert r.makespan == pytest.approx(4.0)


def test_plan_from_runtime_state_with_the_simulation_coster():
    """plan(app, node, state): finished nodes stay finished, done rows are not redone, a
    running node is kept where it is unless moving pays."""
    from costmodel.hardware import get_node_preset

    from samullm.costing import build_coster
    from samullm.graph import application_from_dict
    from samullm.planner import plan
    from samullm.state import PlannerState, RunningNode
    from tests.test_costing import ConstantLatency, Fixed

    app = application_from_dict({
        "dataset": {"rows": [{"q": "", "q_tokens": 10} for _ in range(40)], "token_counts": {"q": "q_tokens"}},
        "nodes": [
            {"name": "a", "model": "vicuna-13b-v1.5", "prompt": "{{ q }}"},
            {"name": "b", "model": "koala-13B-HF", "prompt": "{{ q }}"},
            {"name": "j", "model": "chatglm3-6b", "prompt": "{{ q }}{{ a }}{{ b }}"},
        ],
    })
    node = get_node_preset("a100-80gb-x2")
    state = PlannerState(
        finished=["a"],
        done_rows={"b": list(range(30))},
        running=[RunningNode(node="b", tp=1, dp=1, replicas=[[0]])],
        observed={"output_tokens": {"a": {i: 5 for i in range(40)}}},
    )
    coster = build_coster(app, node, state, latency_for=lambda s, tp, d: ConstantLatency(),
                          load_for=lambda s, tp, d: 30.0, lengths_for=lambda n: Fixed(4))
    assert coster.num_requests("a", 0) == 0 and coster.num_requests("b", 0) == 10
    schedule = plan(app, node, state, coster=coster)
    assert schedule.replanned_from_state
    assert all(n.node != "a" for s in schedule.stages for n in s.nodes)
    first = schedule.stages[0].node("b")
    assert first.action == "continue" and first.devices == [0] and first.requests_total == 10
    assert schedule.stages[-1].nodes[0].node == "j"


def test_bad_state_is_refused():
    from costmodel.hardware import get_node_preset

    from samullm.costing import build_coster
    from samullm.errors import UserInputError
    from samullm.graph import application_from_dict
    from samullm.planner import plan
    from samullm.state import PlannerState, RunningNode
    from tests.test_costing import ConstantLatency, Fixed

    app = application_from_dict({
        "dataset": {"rows": [{"q": "x"}]},
        "nodes": [{"name": "a", "model": "vicuna-13b-v1.5", "prompt": "{{ q }}"},
                  {"name": "b", "model": "koala-13B-HF", "prompt": "{{ q }}"}],
    })
    node = get_node_preset("a100-80gb-x2")
    hooks = dict(latency_for=lambda s, tp, d: ConstantLatency(), load_for=lambda s, tp, d: 1.0, lengths_for=lambda n: Fixed(4))
    state = PlannerState(running=[RunningNode(node="a", tp=1, replicas=[[0]]), RunningNode(node="b", tp=1, replicas=[[0]])])
    with pytest.raises(UserInputError, match="not valid"):
        plan(app, node, state, coster=build_coster(app, node, state, **hooks))
    state = PlannerState(finished=["ghost"])
    with pytest.raises(UserInputError, match="unknown node"):
        plan(app, node, state, coster=build_coster(app, node, None, **hooks))


def test_list_policy_starts_in_order_and_widens_onto_idle_devices():
    from samullm.list_scheduling import ListPolicy

    c = ToyCoster({"a": ToyNode(8), "b": ToyNode(4), "j": ToyNode(4, deps=("a", "b"))}, pairs(4))
    policy = ListPolicy({"a": ExecPlan(1, 2), "b": ExecPlan(1, 1), "j": ExecPlan(1, 1)}, ("a", "b", "j"))
    tl = Timeline.start(c, 0)
    first = policy(tl)
    # nothing else waits, so b is widened onto the idle device when that ends it sooner
    assert first["a"].plan == ExecPlan(1, 2) and first["b"].plan.num_devices == 2
    tl.apply(first)
    second = policy(tl)
    assert all(isinstance(ch, Keep) for n, ch in second.items() if tl.nodes[n].run is not None)


def test_list_scheduling_result_replays_exactly():
    from samullm.baselines import run_policy
    from samullm.list_scheduling import ListPolicy, improve

    c = _random_instance(random.Random(5))
    start = lambda: Timeline.start(c, 0)  # noqa: E731
    found = improve(start)
    assert found is not None
    value, stages, policy = found
    tl = start()
    run_policy(tl, policy)
    assert tl.time == pytest.approx(value)
    assert isinstance(policy, ListPolicy)


def test_paused_node_resumes_with_finished_requests_kept():
    c = ToyCoster({"a": ToyNode(4), "b": ToyNode(2), "c": ToyNode(3)}, pairs(2))
    tl = Timeline.start(c, 0)
    tl.apply({"a": TP1, "b": TP1})  # b ends at 2; a has finished 2 of 4
    rec = tl.apply({"c": TP1})  # a is paused
    assert tl.nodes["a"].run is None and tl.nodes["a"].done.sum() == 2
    assert rec.end == 5.0
    rec = tl.apply({"a": TP1})
    assert rec.members["a"].action == "resume" and rec.end == 7.0  # only its 2 unfinished requests


class _SharedEngines(ToyCoster):
    """Toy costs where nodes named alike before "_" share one engine (a chain of summaries)."""

    def engine_key(self, node):
        return node.split("_")[0]


def test_list_search_moves_a_same_engine_chain_together():
    from samullm.list_scheduling import _engine_groups, improve

    # s_0 -> s_1 share an engine (load 3); x is independent. All on TP1: s_0 on one device
    # (3 + 4), s_1 warm after it (+ 4), x beside them: 11. Widening s_0 or s_1 alone loses the
    # warm engine or a device for x (12 or worse); both on DP2: s_0 ends at 3 + 2, s_1 takes
    # its warm engine (+ 2), then x on both devices (+ 3): 10.
    c = _SharedEngines({"s_0": ToyNode(4, load=3.0), "s_1": ToyNode(4, load=3.0, deps=("s_0",)),
                        "x": ToyNode(6)}, pairs(2), alpha=0.8)
    start = lambda: Timeline.start(c, 0)  # noqa: E731
    assert _engine_groups(start(), ["s_0", "s_1", "x"]) == [["s_0", "s_1"]]
    value, _, policy = improve(start)
    assert value == pytest.approx(10.0)
    assert policy.plans["s_0"] == policy.plans["s_1"] == ExecPlan(1, 2)


def test_engine_groups_need_a_dependency():
    from samullm.list_scheduling import _engine_groups

    c = _SharedEngines({"s_0": ToyNode(4), "s_1": ToyNode(4), "x": ToyNode(2, deps=("s_0",))}, pairs(2))
    assert _engine_groups(Timeline.start(c, 0), ["s_0", "s_1", "x"]) == []


def test_list_policy_relaunches_the_last_member_onto_idle_devices():
    from samullm.baselines import run_policy
    from samullm.list_scheduling import ListPolicy

    # a (8 requests) and b (2) on one device each; j waits for both. b ends at 2 with a 2 of 8
    # done: a relaunched on both devices runs its 6 left at speed 2 (ends at 5), j on DP2 takes
    # 1 more: 6. Kept where it is, a ends at 8 while b's device idles: 9.
    c = ToyCoster({"a": ToyNode(8), "b": ToyNode(2), "j": ToyNode(2, deps=("a", "b"))}, pairs(2))
    plans = {n: ExecPlan(1, 1) for n in ("a", "b", "j")}
    for restart, expected in ((True, 6.0), (False, 9.0)):
        tl = Timeline.start(c, 0)
        run_policy(tl, ListPolicy(plans, ("a", "b", "j"), restart_tail=restart))
        assert tl.time == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(8))
def test_small_search_gains_keep_the_best_baseline(seed):
    """A searched schedule replaces the best baseline's only when faster by more than
    trust_margin: with a huge margin the best baseline's schedule is returned as it is; with
    none, the search's (never slower)."""
    c = _random_instance(random.Random(200 + seed))
    times = {}
    for name, policy in BASELINES.items():
        tl = Timeline.start(c, 0)
        run_policy(tl, policy)
        times[name] = tl.time
    best = min(times.values())
    trusting = search(lambda: Timeline.start(c, 0), PlannerOptions(trust_margin=1.0))
    assert trusting.makespan == pytest.approx(best) and trusting.method.startswith("samullm(")
    assert times[trusting.method[8:-1]] == pytest.approx(best)
    strict = search(lambda: Timeline.start(c, 0), PlannerOptions(trust_margin=0.0))
    assert strict.makespan <= best + 1e-9
    default = search(lambda: Timeline.start(c, 0), PlannerOptions())
    assert default.makespan <= best + 1e-9
    assert default.makespan < best * 0.99 or default.method.startswith("samullm(")
