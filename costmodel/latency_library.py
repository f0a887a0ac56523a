"""Where latency models come from: fitted files (shipped or given), the measured-rows
interpolator, and `latency_model_for`, which picks the best one for (model, TP, device).

Fitted models live one JSON per (model, TP) in a directory named after the device, next to the
factors learned on them (`factors.json`); `samullm costmodel fit --out DIR` writes that layout,
and `--out FILE.json` one bundle file holding the same. The package ships the A100 fits under
costmodel/data/latency/a100-80gb/ (derived from ../shared/data/a100_iteration_latency).
"""

from __future__ import annotations

import dataclasses

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from costmodel.errors import UserInputError
from costmodel.hardware import DeviceSpec
from costmodel.latency import AdditiveLatencyModel
from costmodel.latency_fit import FitOptions, fit_latency_model
from costmodel.latency_predict import LatencyFactors, Reference, predict_latency_model
from costmodel.models import ModelSpec, load_model_spec, match_model_name
from costmodel.paths import calibration_roots, package_data
from costmodel.profiles import ProfileRows, read_profile

BUNDLE_FORMAT = "samullm-latency-bundle/1"
FACTORS_FILE = "factors.json"
# The interpolator follows the measured rows closely: little smoothing, steps cheap, and no
# monotone reshaping (measured times are not always monotone).
INTERPOLATING = FitOptions(linear_smoothing=0.02, step_penalty=0.01, attention_smoothing=0.3,
                           monotone=False)


def shipped_latency_dir(device_name: str) -> Path:
    return package_data("latency") / device_name


def search_dirs(device_name: str) -> list[Path]:
    """Directories of fitted models for a device, first match wins: the DEVICE subfolder of
    each calibration root (`costmodel.paths.calibration_roots`), then the shipped one.
    The runtime can drop fits calibrated on this machine there (`samullm costmodel fit
    --device cpu --out $SAMULLM_LATENCY_DIR/cpu-core`)."""
    extra = [root / device_name for root in calibration_roots()]
    return [d for d in extra + [shipped_latency_dir(device_name)] if d.is_dir()]


def measured_latency_model(rows: ProfileRows, spec: ModelSpec, device: DeviceSpec | str
                           ) -> AdditiveLatencyModel:
    """The measured rows, interpolated: the additive form with a knot at every measured token
    count and almost no smoothing, so it reproduces each measured iteration (median error
    ~0.1%) and follows the physical form between measured shapes. Used as the "truth" cost of
    planner benchmarks, where it must stay separate from the fitted model the planner uses."""
    model = fit_latency_model(rows, spec, device, INTERPOLATING)
    return dataclasses.replace(model, kind="measured")


def measured_latency_model_from_csv(path: str | os.PathLike, device: DeviceSpec | str,
                                    configs_file: str | None = None) -> AdditiveLatencyModel:
    rows = read_profile(path)
    return measured_latency_model(rows, load_model_spec(rows.model, configs_file), device)


# ---- files --------------------------------------------------------------------------------------

def save_latency_models(models: list[AdditiveLatencyModel], factors: LatencyFactors | None,
                        out: str | os.PathLike) -> list[Path]:
    """Write fitted models (and the factors learned on them) to a directory, one JSON per
    (model, TP), or to one bundle file when `out` ends in .json. Returns the files written."""
    out = Path(out)
    if out.suffix == ".json":
        out.parent.mkdir(parents=True, exist_ok=True)
        bundle = {"format": BUNDLE_FORMAT, "models": [_compact(m).to_dict() for m in models],
                  "factors": factors.to_dict() if factors else None}
        out.write_text(json.dumps(bundle, indent=1) + "\n")
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for model in models:
        path = out / f"{model.model}_tp{model.tp}.json"
        _compact(model).save(path)
        written.append(path)
    if factors is not None:
        factors.save(out / FACTORS_FILE)
        written.append(out / FACTORS_FILE)
    return written


def _compact(model: AdditiveLatencyModel) -> AdditiveLatencyModel:
    """Drop knots that linear interpolation reproduces within 0.02%."""
    curves = {name: getattr(model, name).simplified() for name in
              ("prefill_linear", "decode_linear", "prefill_attention", "decode_attention",
               "straggler", "straggler_split")}
    return dataclasses.replace(model, **curves)


def load_latency_models(path: str | os.PathLike) -> tuple[list[AdditiveLatencyModel], LatencyFactors | None]:
    """Fitted models and factors from a directory, a bundle file or a single model file."""
    path = Path(path)
    key = (str(path.resolve()), _mtime(path))
    return _load_cached(key)


def _mtime(path: Path) -> float:
    if not path.exists():
        raise UserInputError(f"latency model path {str(path)!r} does not exist")
    if path.is_dir():
        return max([p.stat().st_mtime for p in path.glob("*.json")] + [path.stat().st_mtime])
    return path.stat().st_mtime


@lru_cache(maxsize=16)
def _load_cached(key: tuple[str, float]) -> tuple[list[AdditiveLatencyModel], LatencyFactors | None]:
    path = Path(key[0])
    if path.is_dir():
        models = [AdditiveLatencyModel.load(p) for p in sorted(path.glob("*.json"))
                  if p.name != FACTORS_FILE]
        factors_path = path / FACTORS_FILE
        return models, LatencyFactors.load(factors_path) if factors_path.is_file() else None
    data = _read(path)
    if data.get("format") == BUNDLE_FORMAT:
        models = [AdditiveLatencyModel.from_dict(m) for m in data.get("models", [])]
        factors = LatencyFactors.from_dict(data["factors"]) if data.get("factors") else None
        return models, factors
    return [AdditiveLatencyModel.from_dict(data)], None


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"cannot read latency model file {str(path)!r}: {err}") from err


# ---- choosing -----------------------------------------------------------------------------------

def latency_model_for(spec: ModelSpec, tp: int, device: DeviceSpec,
                      fitted: str | os.PathLike | None = None) -> AdditiveLatencyModel:
    """The best latency model available for `spec` at TP degree `tp` on `device`:

    1. a fitted model for (model, TP, device) among `fitted` (a directory, bundle or model
       file) or, without `fitted`, among the fits in $SAMULLM_LATENCY_DIR/DEVICE and the
       package's shipped fits for this device (see search_dirs);
    2. else a config-predicted one: physics with the factors stored beside those fits (or the
       shipped A100 factors, scaled to this device's specs), corrected by similar fitted models
       on this device (see latency_predict.predict_latency_model).
    """
    spec.heads_per_device(tp)  # a TP degree the model cannot use is an error here
    # The search folders are part of the cache key: they follow $SAMULLM_LATENCY_DIR and
    # $SAMULLM_HOME, which may change within a process.
    where = (str(fitted),) if fitted is not None else tuple(str(d) for d in search_dirs(device.name))
    return _latency_model_for(spec, tp, device, fitted is not None, where)


@lru_cache(maxsize=256)
def _latency_model_for(spec: ModelSpec, tp: int, device: DeviceSpec, explicit: bool, where: tuple[str, ...]):
    if explicit:
        models, factors = load_latency_models(where[0])
    else:
        models, factors = [], None
        for directory in where:
            found, found_factors = load_latency_models(directory)
            models += found
            factors = factors or found_factors
    same_device = [m for m in models if m.device == device.name]
    names = {m.model for m in same_device}
    name = match_model_name(spec.name, names)
    for model in same_device:
        if model.model == name and model.tp == tp:
            return model
    if factors is None:
        factors = default_factors()
    references = []
    for model in same_device:
        try:
            references.append(Reference(load_model_spec(model.model), model))
        except UserInputError:
            continue  # a fitted model whose config we cannot find cannot inform others
    return predict_latency_model(spec, tp, device, factors, references)


def default_factors() -> LatencyFactors:
    """The factors shipped with the package (learned on the A100 profiles)."""
    for directory in sorted(package_data("latency").glob("*")):
        path = directory / FACTORS_FILE
        if path.is_file():
            return LatencyFactors.load(path)
    raise UserInputError(
        "no latency factors are shipped or given; run `samullm costmodel fit --profiles DIR "
        "--out DIR` and pass the output as the fitted models")
