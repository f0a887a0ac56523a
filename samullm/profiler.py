"""Per-iteration latency profiles of a real engine, in the format of the A100 profiles.

The profiler does not time anything itself: it writes a job whose rows are arranged in waves
(and delays within a wave) so that the engine's own scheduler produces the batch shapes we want,
runs it in an engine worker, and turns the worker's iteration log into CSV rows:

- prefill: a wave of `seqs` prompts of `prompt_len` tokens with max_tokens=1 (one iteration when
  seqs * prompt_len fits the token budget, chunked prefill iterations otherwise);
- decode: a wave of `seqs` prompts of `context` tokens generating enough tokens that, after the
  whole wave is prefilled, all of them decode together for `decode_steps` iterations;
- mixed: `seqs` rows decoding at `context` tokens when one prompt of `prompt_len` tokens arrives
  (a delayed row): the iterations that carry its prefill chunks alongside the decodes.

Every iteration the engine runs is recorded with its true shape, whatever wave caused it; the
first wave is a warm-up and is left out. Output: MODEL_tpN.csv with the columns of
../shared/data/a100_iteration_latency plus the Batch columns (see `CSV_COLUMNS`).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from samullm.devices import DeviceSet
from samullm.errors import UserInputError
from samullm.worker.handle import JobOutcome, run_job
from samullm.worker.messages import EngineOptions, IterationRecord, JobSpec, Row, SamplingSpec
from samullm.worker.results import read_iterations

A100_COLUMNS = (
    "phase",
    "num_seqs",
    "num_tokens",
    "context_tokens",
    "max_seq_len",
    "iter_latency_s",
    "exec_s",
    "sample_s",
    "prepare_inputs_s",
)
BATCH_COLUMNS = (
    "prefill_seqs",
    "prefill_tokens",
    "prefill_attention",
    "decode_seqs",
    "decode_context",
    "decode_max_context",
)
CSV_COLUMNS = A100_COLUMNS + BATCH_COLUMNS

WARMUP_WAVE = 0


@dataclass(frozen=True)
class Sweep:
    """The batch shapes to provoke. Points that do not fit the engine are dropped by `fit`."""

    prefill: tuple[tuple[int, int], ...]  # (seqs, prompt_len)
    decode: tuple[tuple[int, int], ...]  # (seqs, context)
    mixed: tuple[tuple[int, int, int], ...]  # (decode seqs, their context, arriving prompt_len)
    decode_steps: int = 16
    repeats: int = 1  # every point this many times (separate waves)
    max_decode_kv_tokens: int = 32768  # cap on seqs * context of a decode point (its prefill costs)

    def fit(self, max_model_len: int, max_num_batched_tokens: int, max_num_seqs: int) -> Sweep:
        """Keep the points this engine can run as described."""
        room = max_model_len - self.decode_steps - 2
        prefill = tuple(
            (n, p) for n, p in self.prefill if p < max_model_len and n <= max_num_seqs
        )
        decode = tuple(
            (n, c)
            for n, c in self.decode
            if c + _prefill_steps(n, c, max_num_batched_tokens) <= room and n <= max_num_seqs
            and n * c <= self.max_decode_kv_tokens
        )
        mixed = tuple(
            (n, c, p)
            for n, c, p in self.mixed
            if c <= room and p < max_model_len and n < max_num_seqs and n < max_num_batched_tokens
        )
        return Sweep(prefill, decode, mixed, self.decode_steps, self.repeats, self.max_decode_kv_tokens)

    @property
    def num_points(self) -> int:
        return (len(self.prefill) + len(self.decode) + len(self.mixed)) * self.repeats


def _prefill_steps(seqs: int, context: int, max_num_batched_tokens: int) -> int:
    """Steps that prefill a decode wave at most, its decoding rows sharing the token budget."""
    return math.ceil(seqs * context / max(1, max_num_batched_tokens - seqs))


def default_sweep(max_num_batched_tokens: int = 4096) -> Sweep:
    """A few minutes per TP degree for the tiny models on one core."""
    budget = max_num_batched_tokens
    prefill = tuple(
        (n, p)
        for n, p in itertools.product((1, 2, 4, 8, 16, 32, 64), (16, 32, 64, 128, 256, 512, 1024, 2000))
        if n * p <= budget
    )
    decode = tuple(
        itertools.product((1, 2, 4, 8, 16, 32, 64, 128, 256), (16, 128, 512, 1024, 1900))
    )
    mixed = tuple(itertools.product((1, 8, 32, 96), (64, 512), (100, 400, 1500)))
    return Sweep(prefill=prefill, decode=decode, mixed=mixed, decode_steps=16)


def quick_sweep() -> Sweep:
    """A handful of points: for tests and a first look."""
    return Sweep(
        prefill=((1, 64), (4, 128)),
        decode=((1, 32), (8, 64)),
        mixed=((4, 32, 200),),
        decode_steps=4,
    )


@dataclass
class _RowFactory:
    vocab_size: int
    seed: int
    _ids: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def prompt(self, length: int) -> list[int]:
        # Random ids past the special tokens: no two prompts share a prefix (no cache effects).
        return [self._rng.randrange(4, self.vocab_size) for _ in range(length)]

    def row(self, kind: str, wave: int, prompt_len: int, max_tokens: int, delay_steps: int = 0) -> Row:
        return Row(
            row_id=f"{kind}-{next(self._ids)}",
            prompt_token_ids=self.prompt(prompt_len),
            sampling=SamplingSpec(max_tokens=max_tokens, ignore_eos=True),
            wave=wave,
            delay_steps=delay_steps,
        )


@dataclass(frozen=True)
class WaveRow:
    """One row of a sweep, before its prompt is drawn: `count` such rows."""

    kind: str
    wave: int
    prompt_len: int
    max_tokens: int
    count: int = 1
    delay_steps: int = 0


def sweep_shapes(sweep: Sweep, max_num_batched_tokens: int, max_model_len: int = 2048) -> list[WaveRow]:
    """The rows, in waves, that make the engine run the sweep's shapes; wave 0 is a warm-up.
    (What a profile measures depends on these: the calibration's cache key includes them.)"""
    budget = max_num_batched_tokens
    shapes = [WaveRow("warmup", WARMUP_WAVE, min(128, max_model_len - 9), 8, count=4),
              WaveRow("warmup", WARMUP_WAVE, min(512, budget - 8, max_model_len - 3), 2)]
    wave = WARMUP_WAVE + 1
    for _ in range(sweep.repeats):
        for n, p in sweep.prefill:
            shapes.append(WaveRow("prefill", wave, p, 1, count=n))
            wave += 1
        for n, c in sweep.decode:
            # The wave's prefill takes up to ceil(n*c / (budget - n)) steps (its first rows decode,
            # taking a token each, while the last are prefilled): each row decodes through those
            # steps too, so that all n then decode together for `decode_steps` steps (else a large
            # wave's first rows finish before its last start: no step decodes n sequences).
            settle = _prefill_steps(n, c, budget)
            shapes.append(WaveRow("decode", wave, c, settle + sweep.decode_steps + 1, count=n))
            wave += 1
        for n, c, p in sweep.mixed:
            # The decoders' prefill takes up to _prefill_steps; the prompt arrives one step after
            # that, when all of them decode, and its chunks ride along until it is done.
            settle = _prefill_steps(n, c, budget) + 1
            chunks = math.ceil(p / max(1, budget - n))
            shapes.append(WaveRow("mixed-decode", wave, c, settle + chunks + 2, count=n))
            shapes.append(WaveRow("mixed-prefill", wave, p, 1, delay_steps=settle))
            wave += 1
    return shapes


def _fitted(sweep: Sweep, engine: EngineOptions) -> tuple[int, int, Sweep]:
    """(token budget, max_model_len, the sweep's points this engine can run)."""
    budget = engine.max_num_batched_tokens or 4096
    max_len = engine.max_model_len or 2048
    return budget, max_len, sweep.fit(max_len, budget, engine.max_num_seqs or 256)


def profile_shapes(sweep: Sweep, engine: EngineOptions) -> list[WaveRow]:
    """The rows `profile_model` submits for `sweep` on `engine`, without their prompts."""
    budget, max_len, fitted = _fitted(sweep, engine)
    return sweep_shapes(fitted, budget, max_len)


def sweep_rows(sweep: Sweep, vocab_size: int, max_num_batched_tokens: int, seed: int = 0,
               max_model_len: int = 2048) -> list[Row]:
    """The rows of `sweep_shapes`, each with its own random prompt."""
    make = _RowFactory(vocab_size, seed)
    return [make.row(shape.kind, shape.wave, shape.prompt_len, shape.max_tokens, shape.delay_steps)
            for shape in sweep_shapes(sweep, max_num_batched_tokens, max_model_len) for _ in range(shape.count)]


def csv_row(record: IterationRecord) -> dict[str, object]:
    """One CSV row; prepare_inputs_s is left empty (input preparation is inside exec_s here)."""
    return {
        "phase": record.phase,
        "num_seqs": record.num_seqs,
        "num_tokens": record.num_tokens,
        "context_tokens": record.context_tokens,
        "max_seq_len": record.max_seq_len,
        "iter_latency_s": f"{record.iter_latency_s:.6g}",
        "exec_s": f"{record.exec_s:.6g}",
        "sample_s": f"{record.sample_s:.6g}",
        "prepare_inputs_s": "",
        "prefill_seqs": record.prefill_seqs,
        "prefill_tokens": record.prefill_tokens,
        "prefill_attention": f"{record.prefill_attention:.0f}",
        "decode_seqs": record.decode_seqs,
        "decode_context": record.decode_context,
        "decode_max_context": record.decode_max_context,
    }


def write_profile_csv(path: str | Path, records: Iterable[IterationRecord]) -> int:
    """Write the records (warm-up excluded) and return how many rows were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for record in records:
            if record.wave == WARMUP_WAVE:
                continue
            writer.writerow(csv_row(record))
            count += 1
    return count


def profile_name(model: str | Path, tp: int) -> str:
    return f"{Path(model).resolve().name}_tp{tp}"


@dataclass
class ProfileResult:
    tp: int
    csv_path: Path
    rows: int
    outcome: JobOutcome
    records: list[IterationRecord]


def _model_vocab(model: str | Path) -> int:
    config = Path(model) / "config.json"
    if not config.is_file():
        raise UserInputError(f"--model {model}: no config.json there; give a model directory")
    vocab = json.loads(config.read_text()).get("vocab_size")
    if not isinstance(vocab, int) or vocab < 8:
        raise UserInputError(f"{config}: no usable vocab_size")
    return vocab


def profile_model(
    model: str | Path,
    tp: int,
    devices: DeviceSet,
    out_dir: str | Path,
    sweep: Sweep,
    engine: EngineOptions,
    timeout_s: float = 1800.0,
) -> ProfileResult:
    """Run the sweep on one engine with TP degree `tp` on the first `tp` devices."""
    if tp > len(devices.device_ids):
        raise UserInputError(
            f"--tp {tp} needs {tp} devices; the {devices.kind} device set has {len(devices.device_ids)}"
        )
    vocab = _model_vocab(model)
    budget, max_len, fitted = _fitted(sweep, engine)
    out = Path(out_dir)
    name = profile_name(model, tp)
    workdir = out / f".{name}.work"
    for stale in ("results.jsonl", "iterations.jsonl"):
        (workdir / stale).unlink(missing_ok=True)
    job = JobSpec(
        model=str(Path(model).resolve()),
        tensor_parallel_size=tp,
        device_kind=devices.kind,
        device_ids=list(devices.device_ids[:tp]),
        device_cores=[list(c) for c in devices.device_cores] if devices.device_cores else None,
        engine=engine.model_copy(update={"max_num_batched_tokens": budget, "max_model_len": max_len}),
        rows=sweep_rows(fitted, vocab, budget, max_model_len=max_len),
        result_path=str((workdir / "results.jsonl").resolve()),
        iteration_log_path=str((workdir / "iterations.jsonl").resolve()),
    )
    outcome = run_job(job, workdir, timeout=timeout_s)
    if outcome.terminal is None or outcome.terminal.event != "finished":
        detail = getattr(outcome.terminal, "message", None) or f"exit code {outcome.returncode}"
        raise UserInputError(f"profiling {model} at TP {tp} failed: {detail} (log: {workdir / 'worker.log'})")
    records = read_iterations(job.iteration_log_path)
    csv_path = out / f"{name}.csv"
    rows = write_profile_csv(csv_path, records)
    meta = {
        "model": job.model,
        "tensor_parallel_size": tp,
        "device_kind": devices.kind,
        "device_ids": job.device_ids,
        "load_s": outcome.loaded.load_s if outcome.loaded else None,
        "import_s": outcome.loaded.import_s if outcome.loaded else None,
        "engine": outcome.loaded.model_dump(exclude={"time", "event", "load_s", "import_s"}) if outcome.loaded else None,
        "sweep_points": fitted.num_points,
        "iterations": rows,
        "csv": csv_path.name,
    }
    (out / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ProfileResult(tp=tp, csv_path=csv_path, rows=rows, outcome=outcome, records=records)


def read_profile_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def phase_summary(records: Sequence[IterationRecord]) -> dict[str, dict[str, float]]:
    """Count and median iteration latency per phase (warm-up excluded)."""
    by_phase: dict[str, list[float]] = {}
    for r in records:
        if r.wave != WARMUP_WAVE:
            by_phase.setdefault(r.phase, []).append(r.iter_latency_s)
    summary = {}
    for phase, times in sorted(by_phase.items()):
        times.sort()
        summary[phase] = {"iterations": len(times), "median_s": times[len(times) // 2]}
    return summary
