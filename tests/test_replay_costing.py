"""The replay costs its events after scheduling: with numpy (`iteration_times`,
`decode_run_times`) when the latency model offers them, else one call per event. Both must give
what the per-iteration methods give, to the last bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.curves import MAX_TABLE, Curve
from costmodel.engine_config import EngineConfig
from costmodel.interface import Batch, BatchLatencyModel, LatencyModel
from costmodel.latency import AdditiveLatencyModel
from costmodel.simulate import simulate

# ---- curves -----------------------------------------------------------------------------------

# Knots that are not integers (the table interpolates between integers, so a vectorised curve
# that interpolated the knots instead would differ), and values below the first knot, between
# knots, on them, and beyond the last (held or continued along the last segment).
knots = st.lists(st.floats(0.1, 50.0), min_size=1, max_size=6, unique=True).map(sorted)


@settings(max_examples=80, deadline=None)
@given(knots, st.data(), st.sampled_from(["linear", "constant"]),
       st.lists(st.one_of(st.floats(-5.0, 400.0), st.integers(-3, 400)), max_size=30))
def test_evaluate_equals_the_scalar_curve_bit_for_bit(xs, data, extrapolate, points):
    ys = data.draw(st.lists(st.floats(-3.0, 3.0), min_size=len(xs), max_size=len(xs)))
    curve = Curve(tuple(xs), tuple(ys), extrapolate)
    points = points + list(xs) + [xs[-1] + 0.5, xs[-1] * 3 + 7]
    assert curve.evaluate(points).tolist() == [curve(p) for p in points]


def test_evaluate_beyond_the_dense_table():
    # The table stops at MAX_TABLE; the scalar curve then interpolates the knots directly.
    curve = Curve((1.0, 1000.0, 3.0 * MAX_TABLE), (1.0, 2.0, 5.0), "linear")
    points = [0.0, 500.5, MAX_TABLE - 0.5, MAX_TABLE + 0.5, 2.5 * MAX_TABLE, 4.0 * MAX_TABLE]
    assert curve.evaluate(points).tolist() == [curve(p) for p in points]
    assert curve(4.0 * MAX_TABLE) > 5.0  # continued along the last segment


# ---- the additive model -----------------------------------------------------------------------

def curve(xs, ys, extrapolate="linear") -> Curve:
    return Curve(tuple(float(x) for x in xs), tuple(float(y) for y in ys), extrapolate)


def small_model(heads_per_device: int = 32) -> AdditiveLatencyModel:
    """Curves with few, partly non-integer knots that end early, so that batches reach past
    their last knot (linear extrapolation) and into the straggler's kernel choice (heads 32:
    the split kernel for at most 16 sequences, between 513 and 8192 tokens, and always above)."""
    return AdditiveLatencyModel(
        model="small", tp=1, device="test", kind="fitted",
        prefill_linear=curve([1, 37.5, 300, 2048], [0.010, 0.012, 0.02, 0.09]),
        decode_linear=curve([1, 6.5, 20, 64], [0.008, 0.0085, 0.009, 0.0102]),
        prefill_per_seq=2e-5,
        prefill_attention=curve([1, 100.5, 900], [1e-9, 1.3e-9, 2e-9]),
        decode_attention=curve([1, 8, 48.25], [2e-7, 1.5e-7, 1e-7], "constant"),
        straggler=curve([1, 16, 40], [3e-6, 2e-6, 1.5e-6]),
        straggler_split=curve([1.5, 10, 33], [4e-6, 3e-6, 2e-6], "constant"),
        heads_per_device=heads_per_device)


# Longest contexts around the kernel boundaries (512/513, 8192/8193) and elsewhere.
near_boundaries = st.one_of(st.integers(0, 20_000),
                            st.sampled_from([0, 1, 511, 512, 513, 514, 8191, 8192, 8193, 8194]))


@st.composite
def batches(draw) -> Batch:
    prefill_seqs = draw(st.integers(0, 6))
    prefill_tokens = draw(st.integers(prefill_seqs, 5_000)) if prefill_seqs else 0
    pairs = draw(st.integers(0, prefill_tokens * 4_000)) if prefill_tokens else 0
    decode_seqs = draw(st.integers(0, 200))
    context = draw(st.integers(decode_seqs, 300 * max(decode_seqs, 1))) if decode_seqs else 0
    longest = draw(near_boundaries) if decode_seqs else 0
    return Batch(prefill_seqs, prefill_tokens, float(pairs), decode_seqs, context, longest)


def _columns(items: list[Batch]) -> list[np.ndarray]:
    return [np.array([getattr(b, name) for b in items], dtype=float) for name in
            ("prefill_seqs", "prefill_tokens", "prefill_attention", "decode_seqs",
             "decode_context", "decode_max_context")]


@settings(max_examples=120, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=25), st.sampled_from([32, 8, 0]))
def test_iteration_times_equal_iteration_time_bit_for_bit(items, heads):
    model = small_model(heads)
    assert model.iteration_times(*_columns(items)).tolist() == [
        model.iteration_time(b) for b in items]


@st.composite
def decode_runs(draw) -> tuple[int, int, int, int]:
    seqs = draw(st.integers(1, 120))
    context = draw(st.integers(seqs, 200 * seqs))
    longest = draw(near_boundaries)
    # Lengths that cross one boundary, both, or none.
    iterations = draw(st.one_of(st.integers(0, 40), st.integers(0, 9_000)))
    return seqs, context, iterations, longest


@settings(max_examples=120, deadline=None)
@given(st.lists(decode_runs(), min_size=1, max_size=25), st.sampled_from([32, 8, 0]))
def test_decode_run_times_equal_decode_run_time_bit_for_bit(runs, heads):
    model = small_model(heads)
    columns = [np.array(column, dtype=float) for column in zip(*runs)]
    assert model.decode_run_times(*columns).tolist() == [
        model.decode_run_time(s, c, k, decode_max_context=m) for s, c, k, m in runs]


def test_a_run_across_both_kernel_boundaries_is_costed_by_segments():
    # 10 sequences x 32 heads <= 512: the split kernel between 513 and 8192 tokens, the single
    # pass below, the split kernel above: three segments.
    model = small_model(32)
    runs = [(10, 5_000, 9_000, 400), (10, 5_000, 100, 500), (10, 5_000, 50, 8_180)]
    columns = [np.array(column, dtype=float) for column in zip(*runs)]
    vector = model.decode_run_times(*columns)
    for (s, c, k, m), value in zip(runs, vector):
        assert value == model.decode_run_time(s, c, k, decode_max_context=m)
        by_iteration = sum(model.iteration_time(Batch(decode_seqs=s, decode_context=c + j * s,
                                                      decode_max_context=m + j))
                           for j in range(k))
        assert value == pytest.approx(by_iteration, rel=1e-9)


def test_the_additive_model_offers_batch_costing_and_wrappers_need_not():
    model = small_model()
    assert isinstance(model, BatchLatencyModel)
    assert isinstance(model.scaled(2.0), BatchLatencyModel)
    assert not isinstance(PerIteration(model), BatchLatencyModel)
    assert isinstance(PerIteration(model), LatencyModel)


# ---- the replay: both costing paths, and the reference --------------------------------------

class PerIteration:
    """A latency model with only the protocol's per-iteration methods (as wrappers elsewhere
    have): the replay costs it one event at a time."""

    def __init__(self, base: AdditiveLatencyModel) -> None:
        self.base = base

    def iteration_time(self, batch: Batch) -> float:
        return self.base.iteration_time(batch)

    def decode_run_time(self, decode_seqs, decode_context, num_iterations,
                        decode_max_context=0) -> float:
        return self.base.decode_run_time(decode_seqs, decode_context, num_iterations,
                                         decode_max_context=decode_max_context)


def _workload(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 700, n), rng.integers(1, 600, n)


@pytest.mark.parametrize("policy", ["v1", "v0_padded"])
@pytest.mark.parametrize("blocks", [160, 2_000])  # under KV pressure (preemptions), and not
def test_batch_costing_equals_costing_event_by_event(policy, blocks):
    prompts, outputs = _workload(7, 300)
    engine = EngineConfig(policy=policy, max_model_len=2048, max_num_seqs=48,
                          max_num_batched_tokens=2048, block_size=16)
    model = small_model(8)
    batch = simulate(prompts, outputs, model, engine, blocks)
    one_by_one = simulate(prompts, outputs, PerIteration(model), engine, blocks)
    assert batch.num_iterations == one_by_one.num_iterations
    assert batch.num_preemptions == one_by_one.num_preemptions
    assert batch.total_time == one_by_one.total_time
    assert batch.finish_times.tolist() == one_by_one.finish_times.tolist()
    reference = simulate(prompts, outputs, model, engine, blocks, exact=True)
    assert batch.num_iterations == reference.num_iterations
    assert batch.finish_times == pytest.approx(reference.finish_times, rel=1e-9)
    if blocks == 160:
        assert batch.num_preemptions > 10


@pytest.mark.parametrize("policy", ["v1", "v0_padded"])
def test_recorded_iterations_equal_the_reference_replays(policy):
    prompts, outputs = _workload(11, 120)
    engine = EngineConfig(policy=policy, max_model_len=2048, max_num_seqs=24,
                          max_num_batched_tokens=2048, block_size=16)
    model = small_model(8)
    fast = simulate(prompts, outputs, model, engine, 120, record_iterations=True)
    slow = simulate(prompts, outputs, model, engine, 120, record_iterations=True, exact=True)
    assert fast.num_preemptions == slow.num_preemptions > 0
    for name in ("start", "duration", "prefill_seqs", "prefill_tokens", "prefill_attention",
                 "decode_seqs", "decode_context", "decode_max_context"):
        assert getattr(fast.iterations, name).tolist() == getattr(slow.iterations, name).tolist()
    assert fast.finish_times.tolist() == slow.finish_times.tolist()
    # Unrecorded, decode runs are costed in closed form: equal within rounding.
    plain = simulate(prompts, outputs, model, engine, 120)
    assert plain.finish_times == pytest.approx(fast.finish_times, rel=1e-9)
