"""The baselines' rules, on costs computable on paper (tests/toy.py)."""

from __future__ import annotations

import pytest

from samullm.baselines import BASELINES, get_baseline, run_policy
from samullm.errors import UserInputError
from samullm.plans import ExecPlan
from samullm.timeline import Keep, Launch, Timeline
from tests.toy import ToyCoster, ToyNode, pairs


def _plans(choice, tl):
    return {n: (tl.nodes[n].run.plan if isinstance(c, Keep) else c.plan) for n, c in choice.items()}


def three_nodes(**kw):
    return ToyCoster({"a": ToyNode(8, size=3), "b": ToyNode(4, size=1), "c": ToyNode(2, size=2)}, pairs(4), **kw)


def test_sequential_runs_one_node_at_a_time_on_its_fastest_plan():
    c = three_nodes(alpha=0.8)
    tl = Timeline.start(c, 0)
    stages = run_policy(tl, BASELINES["sequential"])
    assert [set(ch) for ch, _ in stages] == [{"a"}, {"b"}, {"c"}]
    # DP scales linearly and TP sublinearly, so DP over all 4 devices is fastest
    assert all(isinstance(c_, Launch) and c_.plan == ExecPlan(1, 4) for ch, _ in stages for c_ in ch.values())
    assert tl.time == pytest.approx((8 + 4 + 2) / 4)


def test_one_per_device_uses_the_smallest_plan_and_backfills():
    c = ToyCoster({n: ToyNode(2) for n in "abcde"}, pairs(4))
    tl = Timeline.start(c, 0)
    first = BASELINES["one-per-device"](tl)
    assert set(first) == {"a", "b", "c", "d"}
    assert all(c_.plan == ExecPlan(1, 1) for c_ in first.values())
    tl.apply(first)
    second = BASELINES["one-per-device"](tl)
    assert "e" in second and isinstance(second["e"], Launch)


def test_even_split_divides_free_devices_evenly():
    c = ToyCoster({"a": ToyNode(8), "b": ToyNode(8)}, pairs(4))
    tl = Timeline.start(c, 0)
    choice = BASELINES["even-split"](tl)
    assert {p.num_devices for p in _plans(choice, tl).values()} == {2}


def test_largest_first_gives_bigger_work_more_devices():
    c = ToyCoster({"small": ToyNode(2, size=1), "big": ToyNode(12, size=9)}, pairs(4))
    tl = Timeline.start(c, 0)
    plans = _plans(BASELINES["largest-first"](tl), tl)
    assert plans["big"].num_devices > plans["small"].num_devices


def test_baselines_never_move_running_nodes():
    c = three_nodes()
    for name, policy in BASELINES.items():
        tl = Timeline.start(c, 0)
        tl.apply(policy(tl))
        while not tl.done:
            choice = policy(tl)
            for n in tl.running():
                assert isinstance(choice[n], Keep), name
            tl.apply(choice)


def test_unknown_baseline_is_refused():
    with pytest.raises(UserInputError, match="unknown baseline"):
        get_baseline("fastest")
