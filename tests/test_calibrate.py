import json
import os

import numpy as np
import pytest

from costmodel.errors import UserInputError
from costmodel.hardware import DeviceSpec
from costmodel.interface import Batch
from costmodel.latency_library import latency_model_for
from costmodel.models import ModelSpec, load_model_spec
from costmodel.profiles import ProfileRows
from samullm.calibrate import (
    MAX_PROFILE_KV_TOKENS,
    CalibrationSettings,
    WorkerOverhead,
    calibrate,
    calibration_root,
    calibration_sweep,
    fit_calibrated_latency,
    fit_worker_overhead,
    kv_capacity_tokens,
    load_calibration,
    model_fingerprint,
    nonnegative_lstsq,
    profile_key,
    step_gaps,
)
from samullm.cli import main as cli_main
from samullm.devices import DeviceSet, resolve_device_set
from samullm.profiler import quick_sweep
from samullm.worker.messages import EngineOptions, IterationRecord, JobSpec, Row, SamplingSpec

CPU = DeviceSpec("cpu-core", "cpu", 12 * 1024**3, 3e11, 1.2e10)
GPU = DeviceSpec("a100-80gb", "gpu", 80 * 1024**3, 3.12e14, 2.0e12)
TOY = ModelSpec(name="toy", architecture="llama", hidden_size=128, num_layers=2,
                num_attention_heads=2, num_kv_heads=1, intermediate_size=384, vocab_size=512,
                max_position_embeddings=2048, gated_mlp=True)


# ---- engine options and sweep ------------------------------------------------------------------

def test_engine_options_are_vllm_cpu_defaults_per_tp_made_explicit():
    settings = CalibrationSettings(kv_cache_gib=0.5)
    one, two = settings.engine_options(CPU, 1), settings.engine_options(CPU, 2)
    assert (one.max_num_batched_tokens, one.max_num_seqs) == (4096, 256)
    assert (two.max_num_batched_tokens, two.max_num_seqs) == (8192, 512)
    assert one.kv_cache_memory_bytes == 512 * 1024**2 and one.max_model_len == 2048
    assert settings.engine_options(GPU, 1).kv_cache_memory_bytes is None  # vLLM sizes it


def test_kv_capacity_counts_tokens_of_one_rank():
    # toy: 2 layers x (K and V) x 1 KV head x 64 dims x 2 bytes = 512 bytes per token
    engine = EngineOptions(kv_cache_memory_bytes=512 * 1000)
    assert kv_capacity_tokens(TOY, 1, engine) == 1000
    assert kv_capacity_tokens(TOY, 2, engine) == 1000  # the one KV head is replicated
    assert kv_capacity_tokens(TOY, 1, EngineOptions()) is None


def test_sweep_reaches_large_decode_batches_within_the_kv_cache():
    settings = CalibrationSettings()
    engine = settings.engine_options(CPU, 1)
    big = calibration_sweep(engine, kv_tokens=10**7, settings=settings)
    assert (256, 512) in big.decode and (128, 1024) in big.decode
    assert all(n * c <= MAX_PROFILE_KV_TOKENS for n, c in big.decode)
    assert any(n == 192 for n, _, _ in big.mixed)  # many decoders plus an arriving prompt
    assert all(n * p <= 4096 for n, p in big.prefill)
    small = calibration_sweep(engine, kv_tokens=40_000, settings=settings)
    assert all(n * c <= 32_000 for n, c in small.decode) and (256, 128) not in small.decode
    assert all(n * c <= 32_000 for n, c, _ in small.mixed)
    quick = calibration_sweep(engine, 10**7, CalibrationSettings(quick=True, repeats=2))
    assert quick.decode == quick_sweep().decode and quick.repeats == 2


# ---- cache keys and the root -------------------------------------------------------------------

def test_profile_key_follows_its_inputs(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "w.safetensors").write_bytes(b"1234")
    devices = DeviceSet("cpu", (0, 1), ((0,), (1,)))
    engine = EngineOptions(max_model_len=2048)
    sweep = quick_sweep()
    key = profile_key(model, 1, devices, engine, sweep)
    assert key == profile_key(model, 1, devices, engine, sweep)
    assert key != profile_key(model, 2, devices, engine, sweep)
    assert key != profile_key(model, 1, devices, engine.model_copy(update={"max_model_len": 1024}), sweep)
    assert key != profile_key(model, 1, DeviceSet("cpu", (1, 0), ((1,), (0,))), engine, sweep)
    (model / "config.json").write_text('{"a": 2}')
    assert key != profile_key(model, 1, devices, engine, sweep)
    assert set(model_fingerprint(model)) == {"config.json", "w.safetensors"}


def test_profile_key_follows_the_rows_the_profiler_makes(tmp_path, monkeypatch):
    """Same sweep, rows built differently (a profiler change): the profile is not reused."""
    import dataclasses

    import samullm.calibrate as calibrate_module
    from samullm.profiler import profile_shapes

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    devices = DeviceSet("cpu", (0,), ((0,),))
    engine = EngineOptions(max_model_len=2048)
    key = profile_key(model, 1, devices, engine, quick_sweep())
    longer = [dataclasses.replace(s, max_tokens=s.max_tokens + 1) for s in profile_shapes(quick_sweep(), engine)]
    monkeypatch.setattr(calibrate_module, "profile_shapes", lambda sweep, engine: longer)
    assert key != profile_key(model, 1, devices, engine, quick_sweep())


def test_root_is_the_latency_dir_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMULLM_LATENCY_DIR", os.pathsep.join(["", str(tmp_path / "a"), str(tmp_path / "b")]))
    assert calibration_root() == tmp_path / "a"
    monkeypatch.delenv("SAMULLM_LATENCY_DIR")
    monkeypatch.setenv("SAMULLM_HOME", str(tmp_path / "home"))
    assert calibration_root() == tmp_path / "home" / "calibration"


# ---- worker overhead ---------------------------------------------------------------------------

def record(step, wave, start, latency, finished):
    return IterationRecord(step=step, wave=wave, start_s=start, iter_latency_s=latency, exec_s=latency,
                           sample_s=0.0, schedule_s=0.0, prefill_seqs=0, prefill_tokens=0,
                           prefill_attention=0.0, decode_seqs=1, decode_context=10,
                           decode_max_context=10, context_tokens=10, max_seq_len=10, num_waiting=0,
                           num_preempted=0, num_finished=finished)


def rows(spec):
    """spec: (wave, delay_steps) per row."""
    return [Row(row_id=f"r{i}", prompt_token_ids=[5], wave=w, delay_steps=d,
                sampling=SamplingSpec(max_tokens=1)) for i, (w, d) in enumerate(spec)]


def test_step_gaps_name_what_happened_in_each_gap():
    job = JobSpec(model="/m", rows=rows([(0, 0), (0, 0), (0, 1), (1, 0)]), result_path="/r")
    records = [record(0, 0, 0.010, 0.100, 0),   # 2 rows submitted first
               record(1, 0, 0.111, 0.100, 2),   # the delayed row before its wave's step 1
               record(2, 1, 0.216, 0.100, 1)]   # wave 1 (one row) after a step that finished
    x, y = step_gaps(records, job, elapsed_s=0.321)
    assert x.tolist() == [[1, 0, 2], [1, 0, 1], [1, 1, 1], [1, 1, 0]]
    assert y == pytest.approx([0.010, 0.001, 0.005, 0.005])


def test_nonnegative_lstsq_pins_negative_coefficients_to_zero():
    x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    assert nonnegative_lstsq(x, np.array([1.0, 2.0, 3.0])) == pytest.approx([1.0, 1.0])
    coef = nonnegative_lstsq(x, np.array([3.0, 2.0, 1.0]))  # slope would be -1
    assert coef == pytest.approx([2.0, 0.0])


def test_worker_overhead_fit_recovers_its_coefficients_and_ignores_stalls():
    truth = WorkerOverhead(per_step=1e-4, per_finishing_step=8e-4, per_row=7e-5)
    rng = np.random.default_rng(0)
    x = np.c_[np.ones(400), rng.integers(0, 2, 400), rng.integers(0, 30, 400) * (rng.random(400) < 0.1)]
    y = x @ np.array([truth.per_step, truth.per_finishing_step, truth.per_row])
    y[5] = 0.5  # another process took the core for half a second
    fit = fit_worker_overhead([(x[:200], y[:200]), (x[200:], y[200:])])
    assert (fit.per_step, fit.per_finishing_step, fit.per_row) == pytest.approx(
        (truth.per_step, truth.per_finishing_step, truth.per_row), rel=1e-6)
    # 100 rows in 50 steps, 20 of which finish rows: 100 x 0.07 + 50 x 0.1 + 20 x 0.8 ms
    assert truth.seconds(100, 50, 20) == pytest.approx(0.007 + 0.005 + 0.016)
    assert WorkerOverhead.from_dict(json.loads(json.dumps(truth.to_dict()))) == truth


# ---- latency fit -------------------------------------------------------------------------------

def synthetic_profile(seconds_of) -> ProfileRows:
    """Prefill, decode (some with one long straggler) and mixed rows timed by seconds_of."""
    shapes = []
    for n in (1, 2, 4, 8, 16):
        for p in (16, 64, 256, 1024):
            if n * p <= 4096:
                shapes.append(("prefill", Batch(n, n * p, float(n * p * p))))
    for s in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for c in (16, 128, 512, 1024):
            shapes.append(("decode", Batch(decode_seqs=s, decode_context=s * c, decode_max_context=c)))
            if s > 1:  # one sequence much longer than the rest
                shapes.append(("decode", Batch(decode_seqs=s, decode_context=(s - 1) * c + 1900,
                                               decode_max_context=1900)))
    for s in (1, 8, 32, 96, 192):
        for chunk in (100, 400, 1500):
            shapes.append(("mixed", Batch(1, chunk, float(chunk * chunk), s, s * 300, 300)))
    arrays = {name: np.array([getattr(b, name) for _, b in shapes], dtype=float)
              for name in ("prefill_seqs", "prefill_tokens", "prefill_attention", "decode_seqs",
                           "decode_context", "decode_max_context")}
    return ProfileRows(model="toy", tp=1, source="synthetic", phase=np.array([p for p, _ in shapes]),
                       seconds=np.array([seconds_of(b) for _, b in shapes]), **arrays)


def cpu_like(batch: Batch) -> float:
    """Per-step overhead, linear layers per token, attention per pair / per context token."""
    return (0.002 + 1e-5 * batch.num_tokens + 5e-5 * batch.prefill_seqs
            + 2e-9 * batch.prefill_attention + 5e-8 * batch.decode_context)


def test_calibrated_fit_has_no_straggler_and_reproduces_a_cpu_like_engine():
    rows = synthetic_profile(cpu_like)
    model = fit_calibrated_latency(rows, TOY, CPU)
    assert model.straggler(8) == 0.0 and model.straggler_split(8) == 0.0
    assert abs(model.info["train_total_error"]) < 0.01 and model.info["train_median_error"] < 0.02
    # a batch the profile never had: 250 decodes of mixed lengths beside a 3,000-token chunk
    batch = Batch(6, 3000, 3000.0 * 500, 250, 250 * 700, 1900)
    assert model.iteration_time(batch) == pytest.approx(cpu_like(batch), rel=0.05)


# ---- command line: bad input fails before any engine starts ------------------------------------

def test_cli_rejects_bad_input(capsys, tmp_path):
    too_many = len(resolve_device_set("cpu").device_ids) + 1
    assert cli_main(["calibrate", "--models", "tiny-s", "--tp", str(too_many), "--root", str(tmp_path)]) == 2
    assert f"TP [{too_many}]" in capsys.readouterr().err
    assert cli_main(["calibrate", "--models", "no-such-model", "--tp", "1", "--root", str(tmp_path)]) == 2
    assert "neither a tiny preset" in capsys.readouterr().err
    assert cli_main(["calibrate", "--tp", "1,x", "--root", str(tmp_path)]) == 2
    assert cli_main(["calibrate", "--repeats", "0", "--root", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_missing_calibration_says_how_to_make_one(tmp_path):
    with pytest.raises(UserInputError, match="samullm calibrate"):
        load_calibration(CPU, tmp_path)


# ---- on a real engine --------------------------------------------------------------------------

@pytest.mark.integration
def test_calibrate_profiles_fits_stores_and_then_is_cached(tiny_s, tmp_path, monkeypatch):
    devices = resolve_device_set("cpu")
    from costmodel.hardware import cpu_device_spec

    device = cpu_device_spec()
    settings = CalibrationSettings(quick=True, kv_cache_gib=0.25)
    first = calibrate([str(tiny_s)], [1], devices, device, settings, root=tmp_path)
    (engine,) = first.engines
    assert engine.profiled and engine.refitted and engine.profile_rows > 8
    assert (tmp_path / "cpu-core" / "tiny-s_tp1.json").is_file()
    assert first.startup.predict(load_model_spec(str(tiny_s)), 1) == pytest.approx(engine.startup_s, abs=1e-3)
    assert first.overhead.per_step >= 0 and first.overhead.per_finishing_step >= 0

    second = calibrate(["tiny-s"], [1], devices, device, settings, root=tmp_path)
    assert not second.engines[0].profiled and not second.engines[0].refitted  # cached

    monkeypatch.setenv("SAMULLM_LATENCY_DIR", str(tmp_path))
    found = latency_model_for(load_model_spec(str(tiny_s)), 1, device)
    assert found.kind == "fitted" and found.info["profile_key"]
    assert load_calibration(device, tmp_path).latency(load_model_spec(str(tiny_s)), 1) == found


# ---- start-up ----------------------------------------------------------------------------------

def test_startup_of_tiny_models_keeps_the_shipped_read_rate():
    from costmodel.startup import StartupFit
    from samullm.calibrate import fit_startup_calibrated, shipped_startup_slope

    big = ModelSpec(name="big", architecture="llama", hidden_size=4096, num_layers=32,
                    num_attention_heads=32, num_kv_heads=32, intermediate_size=11008,
                    vocab_size=32000, max_position_embeddings=4096, gated_mlp=True)
    slope = shipped_startup_slope(CPU)
    # tiny weights (megabytes): no slope can be seen; fixed part per TP = mean of the rest
    tiny = [(TOY, 1, 10.0), (TOY, 1, 12.0), (TOY, 2, 20.0)]
    fit = fit_startup_calibrated(tiny, CPU, "test")
    toy_gib = TOY.weight_bytes(1) / 1024**3
    assert fit.seconds_per_gib == slope
    assert fit.fixed_seconds[1] == pytest.approx(11.0 - slope * toy_gib)
    assert fit.predict(big, 1) == pytest.approx(fit.fixed_seconds[1] + slope * big.weight_bytes(1) / 1024**3)
    # weights that differ by gigabytes: the slope is fitted
    truth = StartupFit({1: 8.0}, 2.0)
    fitted = fit_startup_calibrated([(TOY, 1, truth.predict(TOY, 1)), (big, 1, truth.predict(big, 1))], CPU, "t")
    assert fitted.seconds_per_gib == pytest.approx(2.0) and fitted.fixed_seconds[1] == pytest.approx(8.0)
