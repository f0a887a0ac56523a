"""Engine start-up time (weight load plus initialisation), paid each time a model is launched.

On A100 devices a (model, TP) listed in ../shared/data/a100_engine_load_seconds.json takes its
measured figure; others take a fit on that file: a fixed part per TP degree (starting TP worker
processes dominates: 18 s at TP 1, ~41 s at TP 2 and 4) plus a part per GiB of weights on each
device (0.29 s/GiB). The file is noisy (the same 13B architecture took 10 s to 47 s from
different checkpoints), so the fit's error is ~8 s.

On CPU devices the default is the one observation in ../shared/ENVIRONMENT.md (an engine start
took ~29 s for a tiny model: fixed cost) plus reading weights at 1 GiB/s; the runtime can
calibrate it by fitting its own measured starts (`fit_startup`) and passing the result.
The shipped figures live in costmodel/data/engine_load.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from costmodel.errors import UserInputError
from costmodel.hardware import DeviceSpec
from costmodel.models import ModelSpec, load_model_spec, match_model_name
from costmodel.paths import calibration_roots, package_data

SHIPPED = "engine_load.json"
GiB = 1024**3


@dataclass(frozen=True)
class StartupFit:
    """seconds = fixed_seconds[tp] + seconds_per_gib * (weight GiB on each device). TP degrees
    without a fixed figure take the nearest listed one."""

    fixed_seconds: dict[int, float]
    seconds_per_gib: float
    source: str = ""

    def predict(self, spec: ModelSpec, tp: int) -> float:
        if not self.fixed_seconds:
            raise UserInputError("a start-up fit needs at least one TP degree")
        nearest = min(self.fixed_seconds, key=lambda k: (abs(np.log2(k) - np.log2(tp)), -k))
        return self.fixed_seconds[nearest] + self.seconds_per_gib * spec.weight_bytes(tp) / GiB

    def to_dict(self) -> dict[str, Any]:
        return {"fixed_seconds": {str(k): round(v, 3) for k, v in sorted(self.fixed_seconds.items())},
                "seconds_per_gib": round(self.seconds_per_gib, 4), "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StartupFit":
        return cls({int(k): float(v) for k, v in data["fixed_seconds"].items()},
                   float(data["seconds_per_gib"]), data.get("source", ""))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StartupFit":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise UserInputError(f"cannot read start-up fit {str(path)!r}: {err}") from err


def fit_startup(observations: list[tuple[ModelSpec, int, float]], source: str = "") -> StartupFit:
    """Least squares over (spec, tp, seconds): one fixed part per TP degree and a common
    slope per GiB of weights on each device (the slope is kept non-negative)."""
    if not observations:
        raise UserInputError("fitting start-up times needs at least one observation")
    tps = sorted({tp for _, tp, _ in observations})
    x = np.array([[tp == t for t in tps] + [spec.weight_bytes(tp) / GiB]
                  for spec, tp, _ in observations], dtype=float)
    y = np.array([seconds for _, _, seconds in observations], dtype=float)
    coef = np.linalg.lstsq(x, y, rcond=None)[0] if len(y) > len(tps) else np.append(np.zeros(len(tps)), -1.0)
    if coef[-1] < 0:  # too few or contradictory points: fixed parts only (means per TP)
        coef = np.append([y[x[:, i] > 0].mean() for i in range(len(tps))], 0.0)
    return StartupFit({tp: float(v) for tp, v in zip(tps, coef[:-1])}, float(coef[-1]), source)


@dataclass(frozen=True)
class _Shipped:
    table: dict[tuple[str, int], float]
    gpu_fit: StartupFit
    cpu_fit: StartupFit


@lru_cache(maxsize=1)
def _shipped() -> _Shipped:
    path = package_data(SHIPPED)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"cannot read shipped start-up figures {str(path)!r}: {err}") from err
    table = {(row["model"], int(row["tp"])): float(row["load_seconds"]) for row in data["a100"]["table"]}
    return _Shipped(table, StartupFit.from_dict(data["a100"]["fit"]), StartupFit.from_dict(data["cpu"]["fit"]))


def load_seconds(spec: ModelSpec, tp: int, device: DeviceSpec, fit: StartupFit | None = None) -> float:
    """Seconds to start an engine for `spec` at TP degree `tp` on `device`: a calibrated `fit`
    when given, else the one `samullm calibrate` left for this device (`calibrated_startup`); on A100 devices the measured figure when the model and TP are listed, else the
    A100 fit; on CPU devices the CPU default; on other GPUs the A100 fit."""
    spec.heads_per_device(tp)  # rejects a TP degree the model cannot use
    fit = fit or calibrated_startup(device.name)
    if fit is not None:
        return fit.predict(spec, tp)
    shipped = _shipped()
    if device.kind == "cpu":
        return shipped.cpu_fit.predict(spec, tp)
    if device.name.startswith("a100"):
        name = match_model_name(spec.name, {model for model, _ in shipped.table})
        if name is not None and (name, tp) in shipped.table:
            return shipped.table[(name, tp)]
    return shipped.gpu_fit.predict(spec, tp)


def calibrated_startup(device_name: str) -> StartupFit | None:
    """The start-up fit `samullm calibrate` wrote for this device, if any (first root wins)."""
    for root in calibration_roots():
        path = root / "startup" / f"{device_name}.json"
        if path.is_file():
            return _load_fit(str(path), path.stat().st_mtime)
    return None


@lru_cache(maxsize=8)
def _load_fit(path: str, _mtime: float) -> StartupFit:
    return StartupFit.load(path)


def derive_startup_data(load_seconds_file: str | os.PathLike) -> dict[str, Any]:
    """The content of costmodel/data/engine_load.json, derived from the A100 measurements.
    Rows listed twice keep the later figure (the file says later measurements override)."""
    source = Path(load_seconds_file)
    rows = json.loads(source.read_text())["rows"]
    latest: dict[tuple[str, int], float] = {}
    for row in rows:
        latest[(row["model"].rstrip("/").rsplit("/", 1)[-1], int(row["tp"]))] = float(row["load_seconds"])
    observations = []
    for (model, tp), seconds in latest.items():
        try:
            observations.append((load_model_spec(model), tp, seconds))
        except UserInputError:
            continue  # no config: the table still lists it
    fit = fit_startup(observations, source=f"least squares on {source.name}")
    cpu = StartupFit({1: 29.0}, 1.0, "one engine start of a tiny model on this machine took "
                     "~29 s (../shared/ENVIRONMENT.md); weights read at 1 GiB/s; calibrate with "
                     "measured starts")
    return {
        "source": f"derived from {source.name} (A100-80GB, early-2024 vLLM)",
        "a100": {"table": [{"model": m, "tp": tp, "load_seconds": s}
                           for (m, tp), s in sorted(latest.items())],
                 "fit": fit.to_dict()},
        "cpu": {"fit": cpu.to_dict()},
    }
