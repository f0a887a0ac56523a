import csv
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from costmodel.curves import Curve, hat_weights
from costmodel.errors import UserInputError
from costmodel.hardware import get_device_preset
from costmodel.interface import Batch, LatencyModel
from costmodel.latency import AdditiveLatencyModel, latency_model_for
from costmodel.latency_fit import fit_latency_model
from costmodel.latency_library import (load_latency_models, measured_latency_model,
                                       save_latency_models)
from costmodel.latency_physics import (GRAPH_MAX_SEQS, EnginePhysics, head_width,
                                      kernels_per_layer)
from costmodel.latency_predict import (L2_TO_DRAM_PRIOR, LatencyFactors, LearnOptions, Reference,
                                       learn_factors, predict_latency_model)
from costmodel.models import ModelSpec, load_model_spec
from costmodel.spline_ls import Block, SplineDesign
from costmodel.paths import shared_data
from costmodel.profiles import BATCH_COLUMNS, REQUIRED_COLUMNS, read_profile

A100 = get_device_preset("a100-80gb")
PROFILES = shared_data("a100_iteration_latency")
needs_data = pytest.mark.skipif(not PROFILES.is_dir(), reason="shared data not available")


def line(intercept: float, slope: float, top: float = 10_000.0, extrapolate: str = "linear") -> Curve:
    return Curve((1.0, top), (intercept + slope, intercept + slope * top), extrapolate)


def hand_model(**overrides) -> AdditiveLatencyModel:
    """G_p(n) = 0.02 + 1e-4 n, G_d(n) = 0.01 + 5e-5 n, 1e-5 s per prompt, 1e-9 s per prefill
    pair, 1e-7 s per decode context token, 1e-6 s per straggler token (2e-6 split kernel)."""
    fields = dict(model="hand", tp=1, device="a100-80gb", kind="fitted",
                  prefill_linear=line(0.02, 1e-4), decode_linear=line(0.01, 5e-5),
                  prefill_per_seq=1e-5, prefill_attention=Curve.constant(1e-9),
                  decode_attention=Curve.constant(1e-7), straggler=Curve.constant(1e-6),
                  straggler_split=Curve.constant(2e-6), heads_per_device=32)
    fields.update(overrides)
    return AdditiveLatencyModel(**fields)


# ---- curves ---------------------------------------------------------------------------------------

def test_curve_interpolates_and_extrapolates():
    curve = Curve((1.0, 3.0, 5.0), (1.0, 3.0, 4.0), "linear")
    assert curve(2) == 2.0 and curve(2.5) == 2.5 and curve(4) == 3.5
    assert curve(7) == 5.0  # continues the last segment
    assert curve(0.5) == 1.0
    flat = Curve((1.0, 3.0, 5.0), (1.0, 3.0, 4.0), "constant")
    assert flat(9) == 4.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=3, max_size=8), st.floats(0, 40),
       st.sampled_from(["linear", "constant"]))
def test_hat_weights_reproduce_the_curve(ys, value, extrapolate):
    knots = np.cumsum(np.arange(1, len(ys) + 1, dtype=float))
    curve = Curve(tuple(knots), tuple(ys), extrapolate)
    left, right, wl, wr = hat_weights(knots, np.array([value]), extrapolate)
    y = np.asarray(ys)
    assert wl[0] * y[left[0]] + wr[0] * y[right[0]] == pytest.approx(curve(value), abs=1e-9)


def test_simplified_curve_stays_within_tolerance():
    x = np.arange(1, 2001, dtype=float)
    y = 0.01 + 1e-5 * x + 0.002 * (x > 1000) + 1e-4 * np.sin(x / 50)
    curve = Curve(tuple(x), tuple(y))
    small = curve.simplified(1e-3)
    assert len(small.x) < len(x) / 3
    assert max(abs(small(v) / curve(v) - 1) for v in x) <= 1e-3


# ---- the additive form, by hand --------------------------------------------------------------------

def test_iteration_time_by_hand():
    model = hand_model()
    assert isinstance(model, LatencyModel)
    # 4 prompts padded to 100 tokens: G_p(400) + 4 prompts + 4*100*100 pairs
    prefill = Batch(prefill_seqs=4, prefill_tokens=400, prefill_attention=40_000.0)
    assert model.iteration_time(prefill) == pytest.approx(0.02 + 0.04 + 4e-5 + 4e-5)
    # 10 decodes over 5,000 context tokens: G_d(10) + 5e-4
    decode = Batch(decode_seqs=10, decode_context=5_000)
    assert model.iteration_time(decode) == pytest.approx(0.01 + 5e-4 + 5e-4)
    # mixed (v1): linear layers once on the prefill curve for all 110 tokens, attention parts
    # added, one overhead
    mixed = Batch(1, 100, 10_000.0, 10, 5_000)
    assert model.iteration_time(mixed) == pytest.approx(0.02 + 0.011 + 1e-5 + 1e-5 + 5e-4)
    assert model.iteration_time(Batch()) == 0.0


def test_protocol_offers_the_longest_context_to_decode_runs():
    import inspect

    parameter = inspect.signature(LatencyModel.decode_run_time).parameters["decode_max_context"]
    assert parameter.default == 0
    model = hand_model()
    assert model.decode_run_time(8, 4_000, 3, decode_max_context=1_000) > model.decode_run_time(8, 4_000, 3)


def test_longest_sequence_wait_and_kernel_choice():
    model = hand_model()
    # 100 sequences x 32 heads > 512: single-pass kernel; longest 2,000 vs mean 50
    batch = Batch(decode_seqs=100, decode_context=5_000, decode_max_context=2_000)
    base = model.iteration_time(Batch(decode_seqs=100, decode_context=5_000))
    assert model.iteration_time(batch) - base == pytest.approx(1e-6 * (2_000 - 50))
    # 8 sequences x 32 heads <= 512 and longest beyond one 512-token partition: split kernel
    batch = Batch(decode_seqs=8, decode_context=4_000, decode_max_context=1_000)
    base = model.iteration_time(Batch(decode_seqs=8, decode_context=4_000))
    assert model.iteration_time(batch) - base == pytest.approx(2e-6 * (1_000 - 500))


def _decode_sum(model, seqs, context, iterations, longest=0):
    return sum(model.iteration_time(Batch(decode_seqs=seqs, decode_context=context + i * seqs,
                                          decode_max_context=longest + i if longest else 0))
               for i in range(iterations))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(0, 20_000), st.integers(0, 700), st.integers(0, 900))
def test_decode_run_time_is_the_sum_of_its_iterations(seqs, context, iterations, longest):
    model = hand_model()
    assert model.decode_run_time(seqs, context, iterations) == pytest.approx(
        _decode_sum(model, seqs, context, iterations), rel=1e-9, abs=1e-12)
    assert model.decode_run_time(seqs, context, iterations, longest) == pytest.approx(
        _decode_sum(model, seqs, context, iterations, longest), rel=1e-9, abs=1e-12)


def test_save_load_round_trip(tmp_path):
    model = hand_model(prefill_linear=Curve((1.0, 64.0, 65.0, 500.0), (0.02, 0.03, 0.035, 0.1)))
    path = tmp_path / "m.json"
    model.save(path)
    loaded = AdditiveLatencyModel.load(path)
    assert loaded == model
    batch = Batch(3, 300, 30_000.0, 7, 3_000, 1_000)
    assert loaded.iteration_time(batch) == pytest.approx(model.iteration_time(batch), rel=1e-6)
    with pytest.raises(UserInputError, match="format"):
        AdditiveLatencyModel.from_dict({"format": "other"})


# ---- profiles ---------------------------------------------------------------------------------------

def write_profile(path, rows, columns=None):
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def synthetic_rows(model: AdditiveLatencyModel, seed: int = 0) -> list[dict]:
    """Profile rows in the A100 files' shapes, timed by `model` (1% noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for seqs in range(1, 257, 3):
        for length in (1, 2, max(4096 // seqs, 1)):
            seconds = model.iteration_time(Batch(seqs, seqs * length, float(seqs * length * length)))
            rows.append({"phase": "prefill", "num_seqs": seqs, "num_tokens": seqs * length,
                         "context_tokens": seqs * length, "max_seq_len": length,
                         "iter_latency_s": "", "exec_s": seconds * rng.normal(1, 0.01)})
        for context, longest in ((seqs, 1), (seqs * 1000, 1000), (seqs + 2000, 2001)):
            seconds = model.iteration_time(Batch(decode_seqs=seqs, decode_context=context,
                                                 decode_max_context=longest))
            rows.append({"phase": "decode", "num_seqs": seqs, "num_tokens": seqs,
                         "context_tokens": context, "max_seq_len": longest,
                         "iter_latency_s": "", "exec_s": seconds * rng.normal(1, 0.01)})
    return rows


def test_profile_batches_follow_the_documented_rules(tmp_path):
    path = tmp_path / "m_tp2.csv"
    rows = [{"phase": "prefill", "num_seqs": 3, "num_tokens": 250, "context_tokens": 250,
             "max_seq_len": 100, "iter_latency_s": "0.5", "exec_s": "0.6"},
            {"phase": "decode", "num_seqs": 4, "num_tokens": 4, "context_tokens": 400,
             "max_seq_len": 130, "iter_latency_s": "", "exec_s": "0.02"},
            {"phase": "mixed", "num_seqs": 3, "num_tokens": 66, "context_tokens": 700,
             "max_seq_len": 300, "iter_latency_s": "", "exec_s": "0.03", "prefill_seqs": 1,
             "prefill_tokens": 64, "prefill_attention": 64 * 128, "decode_seqs": 2,
             "decode_context": 500}]
    write_profile(path, rows, list(REQUIRED_COLUMNS) + ["iter_latency_s"] + list(BATCH_COLUMNS))
    profile = read_profile(path)
    assert (profile.model, profile.tp) == ("m", 2)
    assert profile.batch(0) == Batch(3, 300, 3 * 100 * 100.0, 0, 0, 0)  # padded to the longest
    assert profile.batch(1) == Batch(0, 0, 0.0, 4, 400, 130)
    assert profile.batch(2) == Batch(1, 64, 64 * 128.0, 2, 500, 0)  # max_seq_len not used
    assert list(profile.seconds) == [0.5, 0.02, 0.03]  # iter_latency_s, else exec_s


def test_profile_errors_name_the_file_and_column(tmp_path):
    path = tmp_path / "m_tp1.csv"
    write_profile(path, [{"phase": "decode", "num_seqs": 1, "num_tokens": 1, "context_tokens": 1,
                          "exec_s": 0.01}])
    with pytest.raises(UserInputError, match=r"m_tp1.csv.*'max_seq_len'"):
        read_profile(path)
    write_profile(path, [{"phase": "mixed", "num_seqs": 1, "num_tokens": 1, "context_tokens": 1,
                          "max_seq_len": 1, "exec_s": 0.01}])
    with pytest.raises(UserInputError, match="mixed row needs column 'prefill_seqs'"):
        read_profile(path)
    write_profile(path, [{"phase": "warmup", "num_seqs": 1, "num_tokens": 1, "context_tokens": 1,
                          "max_seq_len": 1, "exec_s": 0.01}])
    with pytest.raises(UserInputError, match="phase 'warmup'"):
        read_profile(path)
    bad_name = tmp_path / "model.csv"
    bad_name.write_text("phase\n")
    with pytest.raises(UserInputError, match="MODEL_tpN.csv"):
        read_profile(bad_name)


# ---- fitting ------------------------------------------------------------------------------------------

def test_fit_recovers_a_known_model(tmp_path):
    truth = hand_model(heads_per_device=40)
    path = tmp_path / "vicuna-13b-v1.5_tp1.csv"
    write_profile(path, synthetic_rows(truth))
    rows = read_profile(path)
    fitted = fit_latency_model(rows, load_model_spec("vicuna-13b-v1.5"), A100)
    probes = [Batch(5, 1000, 200_000.0), Batch(70, 70 * 30, 70 * 900.0),
              Batch(decode_seqs=50, decode_context=20_000), Batch(decode_seqs=200, decode_context=400),
              Batch(decode_seqs=120, decode_context=6_000, decode_max_context=1_800)]
    for batch in probes:
        assert fitted.iteration_time(batch) == pytest.approx(truth.iteration_time(batch), rel=0.03)


def _monotone_checks(model):
    for seqs in (1, 8, 64):
        times = [model.iteration_time(Batch(seqs, seqs * n, float(seqs * n * n))) for n in range(1, 600, 7)]
        assert np.all(np.diff(times) >= 0)
        times = [model.iteration_time(Batch(decode_seqs=seqs, decode_context=c)) for c in range(seqs, 200_000, 997)]
        assert np.all(np.diff(times) >= 0)
    times = [model.iteration_time(Batch(decode_seqs=s, decode_context=s * 500)) for s in range(1, 600)]
    assert np.all(np.diff(times) >= -1e-12)
    times = [model.iteration_time(Batch(1, t, float(t * t), 32, 32_000)) for t in range(1, 4000, 13)]
    assert np.all(np.diff(times) >= 0)


def test_more_work_is_never_faster_shipped_and_predicted():
    _monotone_checks(latency_model_for(load_model_spec("vicuna-13b-v1.5"), 1, A100))
    _monotone_checks(latency_model_for(load_model_spec("Llama-2-70b-chat-hf"), 4, A100))


@needs_data
def test_fit_generalises_to_held_out_iterations():
    rows = read_profile(PROFILES / "vicuna-13b-v1.5_tp2.csv")
    order = np.random.default_rng(1).permutation(len(rows))
    train, test = np.sort(order[: len(rows) // 2]), order[len(rows) // 2:]
    model = fit_latency_model(rows.subset(train), load_model_spec(rows.model), A100)
    errors = [abs(model.iteration_time(rows.batch(i)) / rows.seconds[i] - 1) for i in test]
    assert np.median(errors) < 0.01 and np.percentile(errors, 90) < 0.04


@needs_data
def test_measured_interpolator_reproduces_its_rows():
    rows = read_profile(PROFILES / "chatglm3-6b_tp1.csv")
    model = measured_latency_model(rows, load_model_spec(rows.model), A100)
    assert model.kind == "measured"
    errors = [abs(model.iteration_time(rows.batch(i)) / rows.seconds[i] - 1) for i in range(len(rows))]
    assert np.median(errors) < 0.005


# ---- choosing and predicting ----------------------------------------------------------------------------

def test_latency_model_for_prefers_a_fitted_file_then_predicts():
    vicuna = latency_model_for(load_model_spec("lmsys/vicuna-13b-v1.5"), 1, A100)
    assert vicuna.kind == "fitted" and vicuna.model == "vicuna-13b-v1.5"
    # WizardLM-13B has no profile; its twin architecture does: the prediction follows it
    wizard = latency_model_for(load_model_spec("WizardLM-13B-V1.2"), 1, A100)
    assert wizard.kind == "predicted"
    for batch in (Batch(4, 2048, 4 * 512.0 * 512), Batch(decode_seqs=128, decode_context=100_000)):
        assert wizard.iteration_time(batch) == pytest.approx(vicuna.iteration_time(batch), rel=0.05)
    with pytest.raises(UserInputError, match="tensor-parallel degree 3"):
        latency_model_for(load_model_spec("vicuna-13b-v1.5"), 3, A100)


def test_predictions_scale_with_the_device():
    spec = load_model_spec("Mistral-7B-Instruct-v0.2")
    a100 = latency_model_for(spec, 1, A100)
    h100 = latency_model_for(spec, 1, get_device_preset("h100-80gb"))
    big = Batch(8, 4096, 8 * 512.0 * 512)
    assert h100.iteration_time(big) < a100.iteration_time(big)


def test_fitted_models_save_and_load_as_a_directory_and_bundle(tmp_path):
    models = [hand_model(model="a"), hand_model(model="b", tp=2)]
    save_latency_models(models, None, tmp_path / "dir")
    save_latency_models(models, None, tmp_path / "bundle.json")
    for path in (tmp_path / "dir", tmp_path / "bundle.json"):
        loaded, factors = load_latency_models(path)
        assert factors is None and [m.model for m in loaded] == ["a", "b"]
        assert json.dumps(loaded[1].to_dict()) == json.dumps(models[1].to_dict())


@needs_data
def test_factors_learned_on_some_models_predict_another():
    names = ["Llama-2-7b-chat-hf_tp2", "vicuna-13b-v1.5_tp2", "dolly-v2-12b_tp2"]
    profiles = [read_profile(PROFILES / f"{n}.csv") for n in names]
    train = [(rows, load_model_spec(rows.model)) for rows in profiles]
    factors = learn_factors(train, A100, LearnOptions(rows_per_profile=600))
    target = read_profile(PROFILES / "koala-13B-HF_tp2.csv")  # unlisted; vicuna is its twin
    spec = load_model_spec(target.model)
    physics = predict_latency_model(spec, 2, A100, factors)
    refs = [Reference(s, fit_latency_model(r, s, A100)) for r, s in train]
    transferred = predict_latency_model(spec, 2, A100, factors, refs)
    sample = range(0, len(target), 7)
    def median_error(model):
        return np.median([abs(model.iteration_time(target.batch(i)) / target.seconds[i] - 1) for i in sample])
    assert median_error(physics) < 0.15
    assert median_error(transferred) < 0.03
    loaded = type(factors).from_dict(json.loads(json.dumps(factors.to_dict())))
    assert predict_latency_model(spec, 2, A100, loaded).iteration_time(Batch(decode_seqs=9, decode_context=900)) \
        == pytest.approx(physics.iteration_time(Batch(decode_seqs=9, decode_context=900)), rel=1e-5)


# ---- physics of the config-predicted model, by hand --------------------------------------------------

def test_kernel_counts_per_architecture():
    assert kernels_per_layer(load_model_spec("Llama-2-7b-hf")) == 10
    assert kernels_per_layer(load_model_spec("dolly-v2-12b")) == 14
    assert kernels_per_layer(load_model_spec("gpt-j-6b")) == 12
    assert kernels_per_layer(load_model_spec("chatglm3-6b")) == 12
    assert kernels_per_layer(load_model_spec("Mixtral-8x7B-v0.1")) == 17
    plain = ModelSpec("x", "unknown_family", 1024, 4, 16, 16, 4096, 1000, 2048, gated_mlp=False)
    gated_moe = ModelSpec("y", "unknown_family", 1024, 4, 16, 4, 4096, 1000, 2048, gated_mlp=True,
                          num_experts=4, experts_per_token=2)
    assert kernels_per_layer(plain) == 13 and kernels_per_layer(gated_moe) == 10 + 7


def test_engine_physics_by_hand():
    llama = EnginePhysics(load_model_spec("Llama-2-7b-hf"), 2, A100, A100)
    assert llama.gpu_kernels == 32 * 10 and llama.allreduces == 32 * 2
    assert llama.host_ops == 32 * 12  # ten kernels and two all-reduces per layer
    assert list(llama.blocks([1, 3])) == [16, 48]  # 32 heads over 2 devices
    # Llama-2-70B at TP 4: 16 query heads and 2 KV heads of 128 per device, 80 layers
    big = EnginePhysics(load_model_spec("Llama-2-70b-hf"), 4, A100, A100)
    bw = A100.memory_bandwidth
    assert big.kv_time == pytest.approx(2 * 80 * 2 * 128 * 2 / bw)
    assert big.kv_query_time == pytest.approx(2 * 80 * 16 * 128 * 2 / bw)
    assert big.block_time == pytest.approx(80 * 128 * 2 * 2 / bw)
    # all-reduce bytes: 2 per layer of n x hidden fp16, ring factor 2 (tp-1)/tp, over NVLink
    assert float(big.allreduce_time(10)) == pytest.approx(160 * 10 * 8192 * 2 * 2 * 3 / 4 / 300e9)
    # prefill attention: 4 FLOPs per pair, head and layer, head size padded to a multiple of 32
    assert big.pair_time == pytest.approx(4 * 80 * 16 * 128 / A100.peak_flops)
    narrow = EnginePhysics(ModelSpec("p", "llama", 2560, 32, 32, 32, 6912, 32000, 2048, True), 1, A100, A100)
    assert narrow.spec.head_dim == 80
    assert narrow.pair_time == pytest.approx(4 * 32 * 32 * 96 / A100.peak_flops)


def test_wide_heads_cost_more_per_byte_narrow_ones_do_not_cost_less():
    assert head_width(256) == 2.0 and head_width(128) == 1.0 and head_width(64) == 1.0
    gptj = EnginePhysics(load_model_spec("gpt-j-6b"), 1, A100, A100)
    assert gptj.kv_time == pytest.approx(2 * 28 * 16 * 256 * 2 * 2.0 / A100.memory_bandwidth)


def hand_factors(l2=True) -> LatencyFactors:
    """Round factors: host 30 us per op, GPU 5 us per kernel, weights at peak bandwidth up to 100
    tokens and then proportional to tokens, 1 ms / 0.5 ms fixed (prefill / decode), attention
    efficiencies 1 (DRAM), 0.4 (L2 re-reads), straggler 2 (v1) and 0.5 (split)."""
    curves = {"prefill.weights": Curve((1.0, 100.0, 10_000.0), (1.0, 1.0, 100.0)),
              "decode.weights": Curve((1.0, 100.0, 10_000.0), (1.0, 1.0, 100.0)),
              "decode.kv": Curve.constant(1.0), "decode.straggler": Curve.constant(2.0),
              "decode.straggler_split": Curve.constant(0.5)}
    if l2:
        curves["decode.kv_l2"] = Curve.constant(0.4)
    return LatencyFactors(
        reference_device={"peak_flops": A100.peak_flops, "memory_bandwidth": A100.memory_bandwidth,
                          "interconnect_bandwidth": A100.interconnect_bandwidth},
        scalars={"prefill": {"per_seq": 0.0, "width_per_seq": 0.0, "attention": 2.0},
                 "decode": {"per_seq": 1e-6, "width_per_seq": 0.0},
                 "gpu": {"kernel": 5e-6}, "eager": {"op": 30e-6}},
        per_tp={"prefill": {"fixed": {1: 1e-3}}, "decode": {"fixed": {1: 0.5e-3}}},
        curves=curves)


def test_predicted_linear_layers_take_the_larger_of_host_and_gpu_when_eager():
    spec = load_model_spec("Llama-2-7b-hf")
    model = predict_latency_model(spec, 1, A100, hand_factors())
    weights = spec.decode_weight_bytes(1) / A100.memory_bandwidth  # dense: the same for any n
    host = 30e-6 * 320
    gpu_small = 5e-6 * 320 + weights  # below 100 tokens the weights are read at peak bandwidth
    assert host > gpu_small
    # a small prompt: the host's dispatch binds; a long one: the GPU's matmuls bind
    assert model.iteration_time(Batch(1, 10, 100.0)) == pytest.approx(
        1e-3 + host + 2.0 * 4 * 32 * 32 * 128 * 100 / A100.peak_flops, rel=1e-6)
    assert model.prefill_linear(1000) == pytest.approx(1e-3 + 5e-6 * 320 + weights * 10, rel=1e-6)
    # decode replays a CUDA graph up to 256 sequences (no host floor), runs eagerly beyond
    assert model.decode_linear(10) == pytest.approx(0.5e-3 + gpu_small + 1e-6 * 10, rel=1e-6)
    eager = GRAPH_MAX_SEQS + 1
    gpu_eager = 5e-6 * 320 + weights * eager / 100
    assert model.decode_linear(eager) == pytest.approx(0.5e-3 + max(host, gpu_eager) + 1e-6 * eager, rel=1e-6)


def test_predicted_decode_attention_prices_grouped_query_rereads_from_l2():
    bw = A100.memory_bandwidth
    mha = predict_latency_model(load_model_spec("Llama-2-7b-hf"), 1, A100, hand_factors())
    kv = 2 * 32 * 32 * 128 * 2 / bw
    assert mha.decode_attention(7) == pytest.approx(kv * 1.0)
    # Mistral-7B: 32 query heads share 8 KV heads: DRAM reads each KV head once, the other
    # three query heads of each group re-read it from L2
    gqa = predict_latency_model(load_model_spec("Mistral-7B-Instruct-v0.2"), 1, A100, hand_factors())
    dram, query = 2 * 32 * 8 * 128 * 2 / bw, 2 * 32 * 32 * 128 * 2 / bw
    assert gqa.decode_attention(7) == pytest.approx(dram * 1.0 + (query - dram) * 0.4)
    unlearned = predict_latency_model(load_model_spec("Mistral-7B-Instruct-v0.2"), 1, A100,
                                      hand_factors(l2=False))
    assert unlearned.decode_attention(7) == pytest.approx(dram + (query - dram) * L2_TO_DRAM_PRIOR)
    # the longest sequence's chain: one head's K and V per token and layer
    assert gqa.straggler(7) == pytest.approx(32 * 128 * 2 * 2 / bw * 2.0)
    assert gqa.straggler_split(7) == pytest.approx(32 * 128 * 2 * 2 / bw * 0.5)


def test_decode_attention_reads_dram_over_kv_streams_and_l2_over_blocks():
    # DRAM efficiency 2 at 8 streams falling to 1 at 64 (linear between), L2 efficiency 0.5 at
    # 8 blocks falling to 0.25 at 64: each side is read at its own parallelism
    factors = hand_factors()
    curves = {**factors.curves, "decode.kv": Curve((8.0, 64.0), (2.0, 1.0), "constant"),
              "decode.kv_l2": Curve((8.0, 64.0), (0.5, 0.25), "constant")}
    factors = dataclasses.replace(factors, curves=curves)
    bw = A100.memory_bandwidth
    # Mistral-7B at TP 1, 2 sequences: 2 x 8 = 16 KV streams, 2 x 32 = 64 thread blocks
    gqa = EnginePhysics(load_model_spec("Mistral-7B-Instruct-v0.2"), 1, A100, A100)
    assert list(gqa.kv_streams([2])) == [16] and list(gqa.blocks([2])) == [64]
    model = predict_latency_model(load_model_spec("Mistral-7B-Instruct-v0.2"), 1, A100, factors)
    dram, query = 2 * 32 * 8 * 128 * 2 / bw, 2 * 32 * 32 * 128 * 2 / bw
    kv_at_16 = 2.0 - (16 - 8) / (64 - 8)
    assert model.decode_attention(2) == pytest.approx(dram * kv_at_16 + (query - dram) * 0.25)
    # multi-head attention: streams and blocks coincide (2 x 32 = 64)
    mha = predict_latency_model(load_model_spec("Llama-2-7b-hf"), 1, A100, factors)
    assert mha.decode_attention(2) == pytest.approx(query * 1.0)


def test_grouped_query_decode_width_prices_rereads_from_l2():
    bw = A100.memory_bandwidth
    width = 32 * 32 * 128 * 2 / bw  # layers x query heads x head size, fp16
    mha = EnginePhysics(load_model_spec("Llama-2-7b-hf"), 1, A100, A100)
    assert mha.decode_width_time == pytest.approx(mha.width_time) == pytest.approx(width)
    # Mistral-7B: 4 query heads per KV head; one reads from DRAM, three hit L2 at 0.4
    gqa = EnginePhysics(load_model_spec("Mistral-7B-Instruct-v0.2"), 1, A100, A100)
    assert gqa.width_time == pytest.approx(width)
    assert gqa.decode_width_time == pytest.approx(width * (0.25 + 0.75 * 0.4))
    # the predicted per-sequence decode cost uses it; prefill keeps the plain width
    factors = hand_factors()
    scalars = {**factors.scalars, "prefill": {**factors.scalars["prefill"], "width_per_seq": 100.0},
               "decode": {**factors.scalars["decode"], "width_per_seq": 100.0}}
    factors = dataclasses.replace(factors, scalars=scalars)
    spec = load_model_spec("Mistral-7B-Instruct-v0.2")
    model = predict_latency_model(spec, 1, A100, factors)
    plain = predict_latency_model(spec, 1, A100, hand_factors())
    assert model.decode_linear(10) - plain.decode_linear(10) == pytest.approx(
        10 * 100.0 * width * 0.55, rel=1e-6)
    assert model.prefill_per_seq == pytest.approx(100.0 * width)


def test_nonnegative_curves_stay_nonnegative():
    # y = 1 - x on x in [0, 1] with a curve forced to be >= 0 and a free constant: the least
    # squares answer has a negative slope, so the curve pins at zero and the constant fits
    x = np.linspace(0.0, 1.0, 50)
    design = SplineDesign(len(x))
    design.add_block(Block("curve", [0.0, 0.5, 1.0], 1.0, "linear", nonnegative=True))
    design.add_term("curve", np.arange(len(x)), x, -1.0)
    design.add_block(Block("constant", [1.0], 1.0))
    design.add_term("constant", np.arange(len(x)), 1.0, 1.0)
    values = design.solve(1.0 - x, np.ones(len(x)))
    assert np.all(values["curve"] >= 0)
    free = SplineDesign(len(x))
    free.add_block(Block("curve", [0.0, 0.5, 1.0], 1.0, "linear"))
    free.add_term("curve", np.arange(len(x)), x, -1.0)
    assert free.solve(1.0 - x, np.ones(len(x)))["curve"][2] == pytest.approx(0.0, abs=1e-6)


def test_nonnegative_solve_meets_the_optimality_conditions():
    from costmodel.spline_ls import _nonnegative_solve

    rng = np.random.default_rng(3)
    for _ in range(20):
        size = int(rng.integers(3, 12))
        root = rng.normal(size=(size + 5, size))
        normal, rhs = root.T @ root, rng.normal(size=size)
        guarded = rng.random(size) < 0.7
        theta, free = _nonnegative_solve(normal, rhs, guarded)
        gradient = normal @ theta - rhs
        assert np.all(theta[guarded] >= 0)
        assert np.allclose(gradient[free], 0, atol=1e-8)  # stationary where free
        assert np.all(gradient[~free] >= -1e-8)  # pinned ones would only raise the objective


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6), st.lists(st.floats(-50, 500), max_size=20),
       st.sampled_from(["linear", "constant"]))
def test_vectorised_curve_matches_the_scalar_one(ys, points, extrapolate):
    # integer knots: the scalar curve interpolates a table of its values at integers
    curve = Curve(tuple(float(k) for k in np.cumsum(np.arange(1, len(ys) + 1))), tuple(ys), extrapolate)
    assert np.allclose(curve.at(points), [curve(p) for p in points])


def test_learning_recovers_host_and_gpu_costs_of_a_known_engine(tmp_path):
    truth = hand_factors()
    profiles = []
    for name, tp in (("Llama-2-7b-hf", 1), ("Llama-2-13b-hf", 1), ("dolly-v2-12b", 1),
                     ("Llama-2-7b-hf", 2), ("Mistral-7B-Instruct-v0.2", 1)):
        spec = load_model_spec(name)
        known = predict_latency_model(spec, tp, A100, truth if tp == 1 else _with_tp2(truth))
        path = tmp_path / f"{name}_tp{tp}.csv"
        write_profile(path, synthetic_rows(known, seed=tp))
        profiles.append((read_profile(path), spec))
    learned = learn_factors(profiles, A100, LearnOptions(rows_per_profile=400))
    assert learned.scalars["eager"]["op"] == pytest.approx(30e-6, rel=0.15)
    # a model none of them is: gpt-neox-20b (14 kernels a layer, 44 layers)
    spec = load_model_spec("gpt-neox-20b")
    known = predict_latency_model(spec, 1, A100, truth)
    predicted = predict_latency_model(spec, 1, A100, learned)
    for batch in (Batch(1, 8, 64.0), Batch(4, 4096, 4 * 1024.0 ** 2), Batch(decode_seqs=4, decode_context=4000),
                  Batch(decode_seqs=200, decode_context=200 * 900, decode_max_context=2000)):
        assert predicted.iteration_time(batch) == pytest.approx(known.iteration_time(batch), rel=0.1)


def _with_tp2(factors: LatencyFactors) -> LatencyFactors:
    per_tp = {phase: {"fixed": {2: table["fixed"][1]}, "allreduce": {2: 20e-6}, "comm": {2: 1.0}}
              for phase, table in factors.per_tp.items()}
    return LatencyFactors(factors.reference_device, factors.scalars, per_tp, factors.curves)


# ---- command line ----------------------------------------------------------------------------------------

def _copy_sample(source, target, rows: int) -> None:
    """A smaller profile: the header and `rows` iterations drawn at random (a regular stride
    would pick one row shape of the sweep's repeating groups)."""
    lines = source.read_text().splitlines(keepends=True)
    keep = np.sort(np.random.default_rng(0).choice(len(lines) - 1, rows, replace=False)) + 1
    target.write_text("".join([lines[0]] + [lines[i] for i in keep]))


@needs_data
def test_cli_fit_and_bench_on_a_small_subset(tmp_path, capsys):
    from samullm.cli import main

    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    seen.mkdir()
    unseen.mkdir()
    for name in ("vicuna-13b-v1.5_tp1", "koala-13B-HF_tp1", "Llama-2-7b-chat-hf_tp1"):
        _copy_sample(PROFILES / f"{name}.csv", seen / f"{name}.csv", 1200)
    _copy_sample(PROFILES / "Baichuan-7B_tp1.csv", unseen / "Baichuan-7B_tp1.csv", 1200)

    out = tmp_path / "fits"
    assert main(["costmodel", "fit", "--profiles", str(seen), "--out", str(out)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["models"] == 3 and figures["train_median"] < 0.02
    models, factors = load_latency_models(out)
    assert {m.model for m in models} == {"vicuna-13b-v1.5", "koala-13B-HF", "Llama-2-7b-chat-hf"}
    assert factors is not None
    chosen = latency_model_for(load_model_spec("Baichuan-7B"), 1, A100, fitted=out)
    assert chosen.kind == "predicted"

    assert main(["bench", "latency", "--profiles", str(seen), "--unseen", str(unseen), "--rows", "600"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {"seen_median", "seen_p90", "left_out_median", "left_out_p90",
                            "unseen_median", "unseen_p90"}
    assert all(np.isfinite(v) and v >= 0 for v in figures.values())
    assert figures["seen_median"] < 0.03


def test_cli_reports_bad_profiles_in_one_line(tmp_path, capsys):
    from samullm.cli import main

    write_profile(tmp_path / "m_tp1.csv", [{"phase": "decode", "num_seqs": 1, "num_tokens": 1,
                                            "context_tokens": 1, "exec_s": 0.01}])
    assert main(["costmodel", "fit", "--profiles", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_seq_len" in err[0]
    assert main(["costmodel", "show", "--model", "no-such-model", "--device", "a100-80gb"]) == 2
    assert main(["costmodel", "show", "--model", "vicuna-13b-v1.5", "--device", "tpu-v5"]) == 2


def test_calibrated_fits_in_the_latency_dir_take_precedence(tmp_path, monkeypatch):
    from costmodel.hardware import cpu_device_spec
    from costmodel.latency_library import _latency_model_for

    device = cpu_device_spec()
    (tmp_path / device.name).mkdir()
    hand_model(model="vicuna-13b-v1.5", device=device.name).save(tmp_path / device.name / "vicuna-13b-v1.5_tp1.json")
    monkeypatch.setenv("SAMULLM_LATENCY_DIR", str(tmp_path))
    _latency_model_for.cache_clear()
    try:
        chosen = latency_model_for(load_model_spec("vicuna-13b-v1.5"), 1, device)
        assert chosen.kind == "fitted" and chosen.device == device.name
        assert chosen.iteration_time(Batch(decode_seqs=10, decode_context=5_000)) == pytest.approx(0.011)
    finally:
        _latency_model_for.cache_clear()


@needs_data
def test_costmodel_fit_drops_the_longest_sequence_wait_for_profiles_of_this_vllm(tmp_path):
    """A profile `samullm profile` wrote (its .meta.json beside it) is fitted without the A100
    engine's wait for the longest sequence; the A100 data's own profiles keep it."""
    import shutil

    from samullm.cli import main as cli_main

    for folder, meta in (("a100", False), ("v1", True)):
        (tmp_path / folder).mkdir()
        shutil.copy(PROFILES / "vicuna-13b-v1.5_tp1.csv", tmp_path / folder / "vicuna-13b-v1.5_tp1.csv")
        if meta:
            (tmp_path / folder / "vicuna-13b-v1.5_tp1.meta.json").write_text("{}")
        assert cli_main(["costmodel", "fit", "--profiles", str(tmp_path / folder),
                         "--out", str(tmp_path / f"{folder}-fit")]) == 0
    (a100,), _ = load_latency_models(tmp_path / "a100-fit")
    (v1,), _ = load_latency_models(tmp_path / "v1-fit")
    assert a100.info["engine"] == "v0_padded" and max(a100.straggler.y) > 0
    assert v1.info["engine"] == "v1" and max(v1.straggler.y) == 0 and max(v1.straggler_split.y) == 0


def test_scaled_model_times_every_iteration_by_the_factor():
    model = hand_model()
    batch = Batch(prefill_seqs=2, prefill_tokens=300, prefill_attention=40_000, decode_seqs=5,
                  decode_context=900, decode_max_context=400)
    assert model.scaled(1.25).iteration_time(batch) == pytest.approx(1.25 * model.iteration_time(batch))
    assert model.scaled(1.25).decode_run_time(8, 2000, 10) == pytest.approx(1.25 * model.decode_run_time(8, 2000, 10))


@needs_data
def test_fit_can_keep_the_profiles_total_time():
    from costmodel.latency_fit import FitOptions

    rows = read_profile(PROFILES / "vicuna-13b-v1.5_tp1.csv")
    spec = load_model_spec("vicuna-13b-v1.5")
    kept = fit_latency_model(rows, spec, "a100-80gb", FitOptions(preserve_total=True))
    total = sum(kept.iteration_time(rows.batch(i)) for i in range(len(rows)))
    assert total == pytest.approx(float(rows.seconds.sum()), rel=1e-9)
    plain = fit_latency_model(rows, spec, "a100-80gb")
    assert kept.info["total_rescale"] * plain.iteration_time(rows.batch(0)) == pytest.approx(
        kept.iteration_time(rows.batch(0)), rel=1e-4)


def test_memoised_decode_terms_belong_to_their_model():
    """The per-batch-size memo of a model is not shared with its scaled or compacted copies."""
    model = hand_model()
    batch = Batch(decode_seqs=8, decode_context=4_000, decode_max_context=1_000)
    first = model.iteration_time(batch)
    assert model.iteration_time(batch) == first  # from the memo
    assert model.scaled(2.0).iteration_time(batch) == pytest.approx(2 * first)
    assert model.iteration_time(batch) == first
    assert model.to_dict() == AdditiveLatencyModel.from_dict(model.to_dict()).to_dict()
