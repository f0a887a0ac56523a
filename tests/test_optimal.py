"""Exhaustive search over stage sequences, and the planner beside it, on paper costs."""

from __future__ import annotations

import random

import pytest

from samullm.errors import UserInputError
from samullm.optimal import all_stages, optimum
from samullm.planner import PlannerOptions, search
from samullm.timeline import Timeline
from tests.test_planner import _random_instance
from tests.toy import ToyCoster, ToyNode, pairs


def test_two_independent_nodes_hand_optimum():
    # a: 6 units, b: 2 units, 2 devices, DP linear, loads 1: best is a on DP2 then b on DP2
    # (1 + 3, then 1 + 1 = 6) vs side by side (1 + 6 = 7) vs a TP1 + b then a... -> 6
    c = ToyCoster({"a": ToyNode(6, load=1.0), "b": ToyNode(2, load=1.0)}, pairs(2), alpha=0.5)
    best = optimum(lambda: Timeline.start(c, 0))
    assert best.makespan == pytest.approx(6.0)


def test_chain_hand_optimum():
    # b needs a. Each alone on DP2: 4/2 + 2/2 = 3.
    c = ToyCoster({"a": ToyNode(4), "b": ToyNode(2, deps=("a",))}, pairs(2))
    assert optimum(lambda: Timeline.start(c, 0)).makespan == pytest.approx(3.0)


def test_all_stages_respects_device_budget():
    c = ToyCoster({"a": ToyNode(2), "b": ToyNode(2)}, pairs(2))
    tl = Timeline.start(c, 0)
    for choice in all_stages(tl):
        assert sum(ch.plan.num_devices for ch in choice.values()) <= 2


def test_refuses_large_instances():
    c = ToyCoster({f"n{i}": ToyNode(1) for i in range(6)}, pairs(2))
    with pytest.raises(UserInputError, match="up to 5 nodes"):
        optimum(lambda: Timeline.start(c, 0))


@pytest.mark.parametrize("seed", range(8))
def test_planner_is_close_to_the_optimum(seed):
    c = _random_instance(random.Random(seed))
    r = search(lambda: Timeline.start(c, 0), PlannerOptions())
    best = optimum(lambda: Timeline.start(c, 0), incumbent=r.makespan)
    assert best.makespan <= r.makespan + 1e-9
    assert r.makespan <= best.makespan * 1.10
