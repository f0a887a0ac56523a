import random

import pytest

from samullm.bounds import makespan_lower_bound
from samullm.optimal import optimum
from samullm.planner import PlannerOptions, search
from samullm.timeline import Timeline
from tests.test_planner import _random_instance
from tests.toy import ToyCoster, ToyNode, pairs


def test_bounds_of_a_small_ensemble_by_hand():
    """Two devices in a pair, speed dp * tp**0.8. a: 4 units, b: 2, judge j: 2 after a and b;
    every load 1 s. Fewest device-seconds, load included: a 1+4 (TP1 DP1), b 1+2, j 1+2:
    work = 11 / 2 = 5.5. Chain a -> j: (1 + a at DP2 in 2 s) + (1 + j at DP2 in 1 s) = 5."""
    c = ToyCoster({"a": ToyNode(4, load=1.0), "b": ToyNode(2, load=1.0),
                   "j": ToyNode(2, load=1.0, deps=("a", "b"))}, pairs(2))
    bound = makespan_lower_bound(Timeline.start(c, 0))
    assert bound.work_s == pytest.approx(5.5)
    assert bound.critical_path_s == pytest.approx(5.0)
    assert bound.seconds == pytest.approx(5.5)


def test_a_node_that_may_inherit_a_warm_engine_is_not_charged_its_load():
    c = ToyCoster({"a": ToyNode(2, load=3.0), "b": ToyNode(2, load=3.0, deps=("a",))}, pairs(2))
    c.engine_key = lambda node: "same model"
    bound = makespan_lower_bound(Timeline.start(c, 0))
    # b may take over a's engine; a pays its load: b reads a's outputs, so nothing of that model
    # can run before a starts. a: load 3 + 1 s on two devices (or 3 + 2 s on one: 5 device-s).
    assert bound.critical_path_s == pytest.approx(3.0 + 1.0 + 1.0)
    assert bound.work_s == pytest.approx((5 + 2) / 2)
    # Two independent nodes of one model: either may come second and take over, so neither is charged.
    c = ToyCoster({"a": ToyNode(2, load=3.0), "b": ToyNode(2, load=3.0)}, pairs(2))
    c.engine_key = lambda node: "same model"
    assert makespan_lower_bound(Timeline.start(c, 0)).work_s == pytest.approx((2 + 2) / 2)


@pytest.mark.parametrize("seed", range(8))
def test_no_schedule_beats_the_bound(seed):
    c = _random_instance(random.Random(seed))
    bound = makespan_lower_bound(Timeline.start(c, 0)).seconds
    planned = search(lambda: Timeline.start(c, 0), PlannerOptions()).makespan
    best = optimum(lambda: Timeline.start(c, 0), incumbent=planned).makespan
    assert bound <= best + 1e-9 <= planned + 2e-9
