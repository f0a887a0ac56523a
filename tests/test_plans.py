"""Execution plans and NVLink-aware placement."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samullm.errors import UserInputError
from samullm.plans import ExecPlan, Topology, check_placement, enumerate_plans, place

PAIRS8 = Topology.of(8, [(0, 1), (2, 3), (4, 5), (6, 7)])
SWITCH8 = Topology.of(8, [tuple(range(8))])


def test_enumerate_plans_counts_devices():
    plans = enumerate_plans(4)
    assert ExecPlan(1, 1) in plans and ExecPlan(2, 2) in plans and ExecPlan(1, 3) in plans and ExecPlan(4, 1) in plans
    assert all(p.num_devices <= 4 for p in plans)
    assert ExecPlan(8, 1) not in plans
    assert [p.num_devices for p in plans] == sorted(p.num_devices for p in plans)


def test_tp2_sits_in_an_nvlink_pair():
    out = place(PAIRS8, [("a", ExecPlan(2, 1))])
    assert out["a"] in {((0, 1),), ((2, 3),), ((4, 5),), ((6, 7),)}


def test_tp2_refused_when_only_split_pairs_are_free():
    # devices 1, 2 free: two singles from different pairs cannot hold a TP-2 group
    assert place(PAIRS8, [("a", ExecPlan(2, 1))], busy=[0, 3, 4, 5, 6, 7]) is None
    # but two TP-1 replicas can use them
    assert place(PAIRS8, [("a", ExecPlan(1, 2))], busy=[0, 3, 4, 5, 6, 7]) == {"a": ((1,), (2,))}


def test_tp4_spans_whole_pairs():
    out = place(PAIRS8, [("a", ExecPlan(4, 1))], busy=[0])
    (group,) = out["a"]
    assert set(group) in ({2, 3, 4, 5}, {2, 3, 6, 7}, {4, 5, 6, 7})
    assert PAIRS8.valid_tp_group(group)
    assert not PAIRS8.valid_tp_group((1, 2, 3, 4))


def test_best_fit_keeps_pairs_whole_for_later():
    # a TP-1 goes into a half-used pair rather than breaking a whole one
    out = place(PAIRS8, [("a", ExecPlan(1, 1))], busy=[0])
    assert out["a"] == ((1,),)


def test_preferred_devices_are_honoured_when_free():
    out = place(PAIRS8, [("a", ExecPlan(2, 1)), ("b", ExecPlan(2, 1))], prefer={"b": ((6, 7),)})
    assert out["b"] == ((6, 7),)
    assert out["a"] != ((6, 7),)


def test_topology_must_cover_devices():
    with pytest.raises(UserInputError):
        Topology.of(4, [(0, 1), (1, 2)])


def test_no_groups_means_one_set():
    topo = Topology.of(2, None)
    assert topo.tp_possible(2)
    assert place(topo, [("a", ExecPlan(2, 1))]) == {"a": ((0, 1),)}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(1, 4)), min_size=1, max_size=6),
    st.sets(st.integers(0, 7), max_size=4),
    st.sampled_from([PAIRS8, SWITCH8]),
)
def test_placement_never_double_books_nor_splits_sets(plans, busy, topo):
    requests = [(f"n{i}", ExecPlan(tp, dp)) for i, (tp, dp) in enumerate(plans)]
    out = place(topo, requests, busy=busy)
    if out is None:
        return
    check_placement(topo, out)
    for key, plan in requests:
        reps = out[key]
        assert len(reps) == plan.dp and all(len(r) == plan.tp for r in reps)
        assert not {d for r in reps for d in r} & busy


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=8))
def test_power_of_two_groups_that_fit_are_placed_on_free_pairs(sizes):
    # on fully free NVLink pairs, TP groups of 1, 2, 4 whose sizes add to <= 8 always fit
    if sum(sizes) > 8:
        return
    out = place(PAIRS8, [(f"n{i}", ExecPlan(s, 1)) for i, s in enumerate(sizes)])
    assert out is not None
    check_placement(PAIRS8, out)
