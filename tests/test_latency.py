import csv
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
from costmodel.latency_predict import LearnOptions, Reference, learn_factors, predict_latency_model
from costmodel.models import load_model_spec
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
