import json

import pytest

from costmodel.errors import UserInputError
from costmodel.hardware import cpu_device_spec, get_device_preset
from costmodel.models import load_model_spec
from costmodel.paths import package_data, shared_data
from costmodel.startup import StartupFit, derive_startup_data, fit_startup, load_seconds

A100 = get_device_preset("a100-80gb")
GiB = 1024**3


def test_listed_model_and_tp_take_the_measured_figure():
    assert load_seconds(load_model_spec("lmsys/vicuna-13b-v1.5"), 1, A100) == 29.981
    assert load_seconds(load_model_spec("Llama-2-70b-chat-hf"), 4, A100) == 45.217


def test_unlisted_pairs_take_the_fit_on_weight_bytes():
    shipped = json.loads(package_data("engine_load.json").read_text())["a100"]["fit"]
    spec = load_model_spec("Baichuan-7B")  # not in the load-time file
    expected = shipped["fixed_seconds"]["2"] + shipped["seconds_per_gib"] * spec.weight_bytes(2) / GiB
    assert load_seconds(spec, 2, A100) == pytest.approx(expected)
    # TP 8 was never measured: the nearest fixed part (TP 4)
    vicuna = load_model_spec("vicuna-13b-v1.5")
    expected8 = shipped["fixed_seconds"]["4"] + shipped["seconds_per_gib"] * vicuna.weight_bytes(8) / GiB
    assert load_seconds(vicuna, 8, A100) == pytest.approx(expected8)
    # another GPU uses the same fit (no measured table)
    h100 = get_device_preset("h100-80gb")
    expected1 = shipped["fixed_seconds"]["1"] + shipped["seconds_per_gib"] * vicuna.weight_bytes(1) / GiB
    assert load_seconds(vicuna, 1, h100) == pytest.approx(expected1)


def test_cpu_default_is_fixed_plus_reading_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMULLM_HOME", str(tmp_path))  # no calibration: the shipped default
    monkeypatch.delenv("SAMULLM_LATENCY_DIR", raising=False)
    spec = load_model_spec("Llama-2-7b-hf")
    assert load_seconds(spec, 1, cpu_device_spec()) == pytest.approx(29.0 + spec.weight_bytes(1) / GiB)


def test_fit_recovers_hand_made_coefficients_and_overrides():
    a, b = load_model_spec("Llama-2-7b-hf"), load_model_spec("Llama-2-13b-hf")
    truth = StartupFit({1: 10.0, 2: 20.0}, 0.5)
    observations = [(spec, tp, truth.predict(spec, tp)) for spec in (a, b) for tp in (1, 2)]
    fit = fit_startup(observations)
    assert fit.fixed_seconds == pytest.approx({1: 10.0, 2: 20.0})
    assert fit.seconds_per_gib == pytest.approx(0.5)
    assert load_seconds(a, 2, A100, fit=fit) == pytest.approx(20.0 + 0.5 * a.weight_bytes(2) / GiB)
    assert StartupFit.from_dict(json.loads(json.dumps(fit.to_dict()))).predict(a, 1) == pytest.approx(fit.predict(a, 1), abs=1e-3)


def test_bad_inputs():
    with pytest.raises(UserInputError, match="tensor-parallel degree 3"):
        load_seconds(load_model_spec("vicuna-13b-v1.5"), 3, A100)
    with pytest.raises(UserInputError, match="at least one observation"):
        fit_startup([])


def test_shipped_figures_are_derived_from_the_shared_file():
    source = shared_data("a100_engine_load_seconds.json")
    if not source.is_file():
        pytest.skip("shared data not available")
    assert json.loads(package_data("engine_load.json").read_text()) == json.loads(json.dumps(derive_startup_data(source)))


def test_calibrated_fit_is_found_in_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMULLM_HOME", str(tmp_path))
    monkeypatch.delenv("SAMULLM_LATENCY_DIR", raising=False)
    device = cpu_device_spec()
    (tmp_path / "calibration" / "startup").mkdir(parents=True)
    StartupFit({1: 10.0, 2: 20.0}, 0.0).save(tmp_path / "calibration" / "startup" / f"{device.name}.json")
    assert load_seconds(load_model_spec("Llama-2-7b-hf"), 2, device) == pytest.approx(20.0)
