"""The planner's view of the cost model: plans that fit, DP shares, subsampling, corrections."""

from __future__ import annotations

import numpy as np
import pytest
from costmodel.hardware import get_node_preset

from samullm.costing import build_coster
from samullm.errors import UserInputError
from samullm.graph import application_from_dict
from samullm.plans import ExecPlan


class ConstantLatency:
    """Every iteration takes 10 ms, whatever it computes."""

    def iteration_time(self, batch):
        return 0.01

    def decode_run_time(self, decode_seqs, decode_context, num_iterations):
        return 0.01 * num_iterations


class Fixed:
    def __init__(self, value):
        self.value = value

    def sample(self, n, rng, max_tokens=None, caps=None):
        out = np.full(n, self.value)
        return np.minimum(out, max_tokens) if max_tokens is not None else out


def coster(rows=8, model="vicuna-13b-v1.5", node="a100-80gb-x4", out_len=4, plan=None, **kw):
    data = {
        "dataset": {"rows": [{"q": "", "q_tokens": 10} for _ in range(rows)], "token_counts": {"q": "q_tokens"}},
        "nodes": [{"name": "a", "model": model, "prompt": "{{ q }}", "sampling": {"max_tokens": 64}}],
    }
    if plan:
        data["nodes"][0]["plan"] = plan
    app = application_from_dict(data)
    return build_coster(app, get_node_preset(node), latency_for=lambda s, tp, d: ConstantLatency(),
                        load_for=lambda s, tp, d: 7.0 * tp, lengths_for=lambda n: Fixed(out_len), **kw)


def test_all_requests_fit_one_batch_so_time_is_iterations():
    c = coster()
    times = c.run_times("a", ExecPlan(1, 1), np.arange(8), 0)
    # 8 prompts of 10 tokens prefill in one iteration (first token), then 3 decode steps
    assert times.max() == pytest.approx(0.04)
    assert c.load_seconds("a", ExecPlan(2, 1)) == 14.0


def test_dp_replicas_split_requests_round_robin():
    c = coster(rows=6)
    times = c.run_times("a", ExecPlan(1, 2), np.arange(6), 0)
    assert times.shape == (6,) and np.allclose(times, 0.04)


def test_plans_respect_memory_and_tp_factor():
    plans = coster(model="Llama-2-70b-chat-hf").plans("a")
    assert min(p.tp for p in plans) == 2  # 140 GB of weights need two 80 GB devices
    assert all(p.tp <= 4 for p in plans)  # at most twice the least TP that fits


def test_model_that_fits_nowhere_is_refused():
    with pytest.raises(UserInputError, match="fits on no device set"):
        coster(model="Llama-2-70b-chat-hf", node="a100-80gb-x1")


def test_pinned_plan_that_does_not_fit_is_refused():
    with pytest.raises(UserInputError, match="pinned plan"):
        coster(plan={"tp": 4, "dp": 2})


def test_pinned_plan_is_the_only_plan():
    c = coster(plan={"tp": 2, "dp": 1, "devices": [2, 3]})
    assert c.plans("a") == [ExecPlan(2, 1)]
    assert c.pinned_replicas("a") == ((2, 3),)


def test_subsampled_timing_is_close_to_the_whole_run():
    # 4,000 identical requests: steady-state batches, time linear in the request count
    c = coster(rows=4000, out_len=50)
    exact = c.run_times("a", ExecPlan(1, 1), np.arange(4000), 0).max()
    fast = c.with_max_requests(1000).run_times("a", ExecPlan(1, 1), np.arange(4000), 0).max()
    assert fast == pytest.approx(exact, rel=0.05)
    assert c.with_max_requests(1000).simulated_requests == 0  # the copy counts its own work


def test_latency_correction_scales_times():
    c = coster()
    base = c.run_times("a", ExecPlan(1, 1), np.arange(8), 0).max()
    c.latency_scale = {"vicuna-13b-v1.5": 1.5}
    c._cache.clear()
    assert c.run_times("a", ExecPlan(1, 1), np.arange(8), 0).max() == pytest.approx(1.5 * base)


def test_replica_slowdown_stretches_dp_plans_only():
    slowdown = {2: 1.1, 4: 1.3}
    c = coster(rows=6, replica_slowdown=lambda dp: slowdown.get(dp, 1.0))
    assert c.run_times("a", ExecPlan(1, 1), np.arange(6), 0).max() == pytest.approx(0.04)
    assert np.allclose(c.run_times("a", ExecPlan(1, 2), np.arange(6), 0), 0.044)
    # the search's subsampled path too
    big = coster(rows=800, replica_slowdown=lambda dp: slowdown.get(dp, 1.0)).with_max_requests(400)
    plain = coster(rows=800).with_max_requests(400)
    stretched = big.run_times("a", ExecPlan(1, 2), np.arange(800), 0)
    assert np.allclose(stretched, 1.1 * plain.run_times("a", ExecPlan(1, 2), np.arange(800), 0))


def test_engine_reuse_can_be_switched_off():
    data = {
        "dataset": {"rows": [{"q": "x"}]},
        "nodes": [{"name": "a", "model": "vicuna-13b-v1.5", "prompt": "{{ q }}"},
                  {"name": "b", "model": "vicuna-13b-v1.5", "prompt": "{{ q }}{{ a }}"},
                  {"name": "c", "model": "vicuna-13b-v1.5", "prompt": "{{ q }}", "engine": {"max_model_len": 2048}}],
    }
    app = application_from_dict(data)
    hooks = dict(latency_for=lambda s, tp, d: ConstantLatency(), load_for=lambda s, tp, d: 1.0, lengths_for=lambda n: Fixed(4))
    on = build_coster(app, get_node_preset("a100-80gb-x2"), **hooks)
    assert on.engine_key("a") == on.engine_key("b") != on.engine_key("c")  # other engine options
    off = build_coster(app, get_node_preset("a100-80gb-x2"), reuse_engines=False, **hooks)
    assert off.engine_key("a") != off.engine_key("b")
