"""Preloading a waiting node's engines on idle devices: timeline semantics, planner, bound.

Toy costs (tests/toy.py): request k of a run finishes (k + 1) * unit / (dp * tp**alpha) seconds
after its load."""

import numpy as np
import pytest

from samullm.bounds import makespan_lower_bound
from samullm.planner import PlannerOptions, make_schedule, search
from samullm.plans import ExecPlan
from samullm.timeline import InvalidStage, Keep, Launch, Preload, Timeline, interleave, uneven_shares
from tests.toy import ToyCoster, ToyNode, pairs


def test_uneven_shares_finish_together_by_hand():
    # two replicas start at once, two 10 s later, one request per second each: all end at 30 s
    assert uneven_shares(100, np.array([0.0, 0.0, 10.0, 10.0]), 1.0).tolist() == [30, 30, 20, 20]
    # a replica that could only start after the others finished everything gets nothing
    assert uneven_shares(4, np.array([0.0, 50.0]), 1.0).tolist() == [4, 0]
    assert uneven_shares(7, np.array([0.0, 0.0]), 1.0).sum() == 7


def test_interleave_is_round_robin_for_equal_shares():
    assert interleave(np.array([2, 2])).tolist() == [0, 1, 0, 1]
    owner = interleave(np.array([3, 1]))
    assert sorted(owner.tolist()) == [0, 0, 0, 1]


def _judge(load_a: float = 0.0) -> ToyCoster:
    return ToyCoster({"a": ToyNode(4, load=load_a), "j": ToyNode(4, load=2.0, deps=("a",))}, pairs(2))


def test_a_preloaded_replica_starts_at_once_and_takes_more_rows():
    """a runs on device 0 (4 s) while j's engine loads on device 1 (ready at 2 s). At 4 s j
    launches on both devices: device 1 at once, device 0 after its 2 s load. At one request per
    second per replica both end together at 4 + 3 = 7 s (device 1: 3 rows, device 0: 1 row);
    without the preload, 4 + 2 + 2 = 8 s."""
    tl = Timeline.start(_judge(), 0)
    rec = tl.apply({"a": Launch(ExecPlan(1, 1), ((0,),)), "j": Preload(ExecPlan(1, 1))})
    assert rec.members["j"].action == "preload" and rec.members["j"].replicas == ((1,),)
    assert rec.ender == "a" and tl.time == pytest.approx(4.0)
    assert tl.replica_loads("j", ExecPlan(1, 2), ((0,), (1,))).tolist() == [2.0, 0.0]
    tl.apply({"j": Launch(ExecPlan(1, 2))})
    assert tl.done and tl.time == pytest.approx(7.0)
    assert not tl.preloaded("j")  # taken over

    cold = Timeline.start(_judge(), 0)
    cold.apply({"a": Launch(ExecPlan(1, 1), ((0,),))})
    cold.apply({"j": Launch(ExecPlan(1, 2))})
    assert cold.time == pytest.approx(8.0)


def test_a_launch_on_preloaded_devices_drops_the_preload_and_others_avoid_them():
    c = ToyCoster({"a": ToyNode(4), "b": ToyNode(2), "c": ToyNode(1),
                   "j": ToyNode(4, load=2.0, deps=("a",))}, pairs(4))
    tl = Timeline.start(c, 0)
    tl.apply({"a": Launch(ExecPlan(1, 1), ((0,),)), "c": Launch(ExecPlan(1, 1), ((2,),)),
              "j": Preload(ExecPlan(1, 1), ((1,),))})
    assert set(tl.preloaded("j")) == {(1,)}
    rec = tl.apply({"a": Keep(), "b": Launch(ExecPlan(1, 1))})  # fits beside the preload
    assert rec.members["b"].replicas != ((1,),) and set(tl.preloaded("j")) == {(1,)}
    assert tl.nodes["b"].finished  # at 3 s
    tl.apply({"a": Launch(ExecPlan(1, 2), ((1,), (3,)))})  # a moves onto j's device
    assert not tl.preloaded("j")


def test_invalid_preloads_are_refused():
    tl = Timeline.start(_judge(), 0)
    with pytest.raises(InvalidStage):
        tl.apply({"j": Preload(ExecPlan(1, 1))})  # a stage needs a runnable node
    with pytest.raises(InvalidStage):
        tl.apply({"a": Preload(ExecPlan(1, 1))})  # a is runnable: launch it
    c = ToyCoster({"a": ToyNode(2), "b": ToyNode(2, deps=("a",)), "j": ToyNode(2, deps=("b",))}, pairs(2))
    with pytest.raises(InvalidStage):  # j's input b is not under way
        Timeline.start(c, 0).apply({"a": Launch(ExecPlan(1, 1)), "j": Preload(ExecPlan(1, 1))})


def _two_and_judge() -> ToyCoster:
    return ToyCoster({"a": ToyNode(4, load=1.0), "b": ToyNode(2, load=1.0),
                      "j": ToyNode(4, load=2.0, deps=("a", "b"))}, pairs(2))


def test_the_planner_preloads_when_that_ends_sooner():
    """Without preloads the best is 9 s (a on device 0 ends at 5, j on both then 5 + 2 + 2).
    With them, b ends at 3 s, j loads on its device until 5 and shares the rows: 8 s."""
    c = _two_and_judge()
    without = search(lambda: Timeline.start(c, 0), PlannerOptions(preload=False, portfolio=False))
    with_ = search(lambda: Timeline.start(c, 0), PlannerOptions(preload=True, portfolio=False))
    assert without.makespan == pytest.approx(9.0)
    assert with_.makespan == pytest.approx(8.0)
    assert any(isinstance(ch, Preload) for stage, _ in with_.stages for ch in stage.values())


def test_a_schedule_with_preloads_replays_to_its_estimate():
    c = _two_and_judge()
    schedule = make_schedule(c, lambda s, approx: Timeline.start(c, s), method="samullm",
                             options=PlannerOptions(preload=True, estimate_samples=1),
                             application="toy", node_spec="pairs")
    actions = [n.action for st in schedule.stages for n in st.nodes]
    assert "preload" in actions
    assert schedule.makespan == pytest.approx(8.0)


def test_with_overlapping_loads_the_bound_lets_a_load_hide_behind_its_inputs():
    """a: 4 s on one device (8 requests at DP2: 4 s); j: load 3, then 1 s at DP2 (2 requests).
    Critical path: 4 + 3 + 1 = 8 s, or with the load overlapping a: max(4, 3) + 1 = 5 s."""
    c = ToyCoster({"a": ToyNode(8), "j": ToyNode(2, load=3.0, deps=("a",))}, pairs(2), alpha=1.0)
    tl = Timeline.start(c, 0)
    assert makespan_lower_bound(tl).critical_path_s == pytest.approx(8.0)
    assert makespan_lower_bound(tl, overlap_loads=True).critical_path_s == pytest.approx(5.0)
