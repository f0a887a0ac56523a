"""Sampling-then-simulation."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel.engine_config import EngineConfig
from costmodel.errors import UserInputError
from costmodel.estimate import estimate, sample_output_lengths
from costmodel.lengths import LengthDistribution
from costmodel.requests import trace_path
from costmodel.simulate import simulate
from tests.test_simulate import LinearLatency

BENCH_TRACE = "sharegpt_8k_filtered_stats_llama2_tokenizer"

CONFIG = EngineConfig(max_model_len=200, block_size=4, max_num_seqs=8)
LATENCY = LinearLatency(c=1e-5)


def test_a_point_distribution_is_one_simulation():
    inputs = np.array([20, 40, 10, 190])
    result = estimate(inputs, LengthDistribution.point(30), 25, LATENCY, CONFIG, 100, samples=3)
    outputs = [25, 25, 25, 10]  # max_tokens 25; the last request has 200 - 190 = 10 left
    direct = simulate(inputs, outputs, LATENCY, CONFIG, 100)
    assert result.totals == pytest.approx([direct.total_time] * 3)
    assert result.std == 0.0
    assert result.output_lens.tolist() == [outputs] * 3
    assert result.finish_times[0] == pytest.approx(direct.finish_times)


def test_samples_differ_and_repeat_with_the_seed():
    inputs = np.full(30, 16)
    lengths = LengthDistribution.from_pmf(np.ones(120))
    a = estimate(inputs, lengths, 150, LATENCY, CONFIG, 200, samples=4, seed=9)
    b = estimate(inputs, lengths, 150, LATENCY, CONFIG, 200, samples=4, seed=9)
    assert np.array_equal(a.totals, b.totals)
    assert len(set(a.totals.tolist())) == 4
    assert a.std > 0
    assert a.mean == pytest.approx(a.totals.mean())
    assert a.finish_times.shape == (4, 30) and a.num_iterations.shape == (4,)
    assert 0.0 < a.completed_fraction(a.mean / 2) < 1.0
    assert a.remaining(0.0).all() and not a.remaining(a.totals.max()).any()


def test_sampled_lengths_respect_both_limits():
    inputs = np.array([10, 100, 150])
    drawn = sample_output_lengths(inputs, LengthDistribution.from_pmf(np.ones(500)), 80, 200,
                                  samples=50, seed=0)
    assert drawn.shape == (50, 3)
    assert drawn[:, 0].max() <= 80 and drawn[:, 2].max() <= 50


def test_estimate_refuses_bad_input_before_simulating():
    lengths = LengthDistribution.point(10)
    with pytest.raises(UserInputError, match="exceeds max_model_len"):
        estimate([10], lengths, 300, LATENCY, CONFIG, 100)
    with pytest.raises(UserInputError, match="leaves no room"):
        estimate([10, 200], lengths, 20, LATENCY, CONFIG, 100)
    with pytest.raises(UserInputError, match="samples"):
        estimate([10], lengths, 20, LATENCY, CONFIG, 100, samples=0)
    # 150 + 50 - 1 slots need 50 blocks of 4; 20 blocks cannot hold the longest possible output.
    with pytest.raises(UserInputError, match="can never fit"):
        estimate([150], LengthDistribution.point(60), 60, LATENCY, CONFIG, 20)
    with pytest.raises(UserInputError, match="max_model_len is not set"):
        estimate([10], lengths, 20, LATENCY, EngineConfig(), 100)


def test_sampling_beats_the_mean_length_on_a_skewed_distribution():
    # Most outputs are short, a few are long: the long ones decide the end of the run, which a
    # mean-length estimate cannot see.
    rng = np.random.default_rng(2)
    lengths = LengthDistribution.from_pmf(np.r_[np.full(20, 0.9 / 20), np.zeros(159), 0.1])
    inputs = rng.integers(5, 20, 200)
    config = EngineConfig(max_model_len=400, block_size=4, max_num_seqs=64)
    actual = simulate(inputs, lengths.sample(200, rng), LATENCY, config, 2000).total_time
    sampled = estimate(inputs, lengths, 200, LATENCY, config, 2000, samples=6, seed=1).mean
    mean_length = round(lengths.mean())
    plugged = simulate(inputs, np.full(200, mean_length), LATENCY, config, 2000).total_time
    assert abs(sampled - actual) / actual < 0.1
    assert abs(sampled - actual) < abs(plugged - actual)


@pytest.mark.skipif(not trace_path(BENCH_TRACE).is_file(), reason="shared data folder not found")
def test_bench_simulate_sampling_beats_mean_length(capsys):
    # The benchmark at a third of its size: ShareGPT through vicuna-13b-v1.5 on the A100 preset.
    import json

    from samullm.cli import main

    assert main(["bench", "simulate", "--requests", "3000", "--samples", "4"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {"seconds_per_sample", "iterations_per_second", "sampling_error",
                            "mean_length_error"}
    assert figures["iterations_per_second"] > 0
    assert figures["sampling_error"] < figures["mean_length_error"]
