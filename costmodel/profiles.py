"""Per-iteration latency profiles: CSV files `MODEL_tpN.csv`, one row per engine iteration.

Columns (the format of ../shared/data/a100_iteration_latency):
  phase            prefill | decode | mixed
  num_seqs         sequences in the batch
  num_tokens       tokens computed (prefill rows: the prompts' tokens before padding)
  context_tokens   tokens attended over (decode rows: sum of the sequences' lengths)
  max_seq_len      the longest sequence in the batch
  iter_latency_s   wall time of the whole iteration (may be empty)
  exec_s           model execution time (always present)
  sample_s, prepare_inputs_s   optional parts, already inside exec_s

What each row costs is described as a `Batch` (costmodel/interface.py):
  prefill rows are padded prompt batches (the A100 data's engine padded every prompt of a
    prefill batch to the longest): prefill_seqs = num_seqs, prefill_tokens = num_seqs *
    max_seq_len, prefill_attention = num_seqs * max_seq_len**2.
  decode rows: decode_seqs = num_seqs, decode_context = context_tokens, and the longest
    context decode_max_context = max_seq_len.
  mixed rows (vLLM v1 chunked prefill, a prefill chunk riding with decodes) MUST carry the
    Batch columns prefill_seqs, prefill_tokens, prefill_attention, decode_seqs, decode_context
    (prefill_attention = sum over prefilling sequences of new_tokens * (computed_before +
    new_tokens)); an optional decode_max_context column gives the longest decode context
    (max_seq_len is not used for them: it may be a prefilling sequence's length).
  Any row that carries those five columns non-empty is read from them whatever its phase.

The time a model should reproduce is `iter_latency_s`, and `exec_s` where it is empty: on the
A100 files that have both, exec_s matches iter_latency_s within 0.1-0.3% (median), while
exec_s + sample_s + prepare_inputs_s overshoots by 4-25%, so those parts are inside exec_s.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from costmodel.errors import UserInputError
from costmodel.interface import Batch

REQUIRED_COLUMNS = ("phase", "num_seqs", "num_tokens", "context_tokens", "max_seq_len", "exec_s")
BATCH_COLUMNS = ("prefill_seqs", "prefill_tokens", "prefill_attention", "decode_seqs",
                 "decode_context")
PHASES = ("prefill", "decode", "mixed")
_FILE_NAME = re.compile(r"^(?P<model>.+)_tp(?P<tp>\d+)\.csv$")


@dataclass(frozen=True)
class ProfileRows:
    """A profile's iterations as arrays mirroring `Batch`, with the measured seconds."""

    model: str
    tp: int
    source: str
    phase: np.ndarray  # str
    prefill_seqs: np.ndarray
    prefill_tokens: np.ndarray
    prefill_attention: np.ndarray
    decode_seqs: np.ndarray
    decode_context: np.ndarray
    decode_max_context: np.ndarray
    seconds: np.ndarray

    def __len__(self) -> int:
        return len(self.seconds)

    def subset(self, index: np.ndarray) -> "ProfileRows":
        arrays = {name: getattr(self, name)[index] for name in _ARRAY_FIELDS}
        return ProfileRows(self.model, self.tp, self.source, **arrays)

    def batch(self, i: int) -> Batch:
        return Batch(int(self.prefill_seqs[i]), int(self.prefill_tokens[i]),
                     float(self.prefill_attention[i]), int(self.decode_seqs[i]),
                     int(self.decode_context[i]), int(self.decode_max_context[i]))


_ARRAY_FIELDS = ("phase", "prefill_seqs", "prefill_tokens", "prefill_attention", "decode_seqs",
                 "decode_context", "decode_max_context", "seconds")


def parse_profile_name(path: str | Path) -> tuple[str, int]:
    """`MODEL_tpN.csv` -> (MODEL, N)."""
    match = _FILE_NAME.match(Path(path).name)
    if not match:
        raise UserInputError(
            f"profile file {str(path)!r} is not named MODEL_tpN.csv (e.g. vicuna-13b-v1.5_tp2.csv)")
    return match.group("model"), int(match.group("tp"))


def find_profiles(directory: str | Path) -> list[Path]:
    """The MODEL_tpN.csv files of a folder, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"profiles folder {str(directory)!r} does not exist")
    paths = sorted(p for p in directory.iterdir() if _FILE_NAME.match(p.name))
    if not paths:
        raise UserInputError(f"profiles folder {str(directory)!r} holds no MODEL_tpN.csv file")
    return paths


def read_profile(path: str | Path) -> ProfileRows:
    """Read and check one profile CSV (every problem is a UserInputError naming the file)."""
    path = Path(path)
    model, tp = parse_profile_name(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise UserInputError(
                    f"profile {str(path)!r} lacks column {missing[0]!r} (required: "
                    f"{', '.join(REQUIRED_COLUMNS)})")
            records = list(reader)
    except OSError as err:
        raise UserInputError(f"cannot read profile {str(path)!r}: {err}") from err
    if not records:
        raise UserInputError(f"profile {str(path)!r} has no rows")
    has_batch_columns = all(c in columns for c in BATCH_COLUMNS)

    out = {name: [] for name in _ARRAY_FIELDS}
    for line, record in enumerate(records, start=2):
        phase = (record["phase"] or "").strip()
        if phase not in PHASES:
            raise UserInputError(
                f"profile {str(path)!r} line {line}: phase {phase!r} is not one of {', '.join(PHASES)}")
        try:
            seqs = int(float(record["num_seqs"]))
            context = int(float(record["context_tokens"]))
            max_len = int(float(record["max_seq_len"] or 0))
            seconds = _seconds(record)
            explicit = has_batch_columns and all((record[c] or "").strip() for c in BATCH_COLUMNS)
            if phase == "mixed" and not explicit:
                missing = next(c for c in BATCH_COLUMNS if c not in columns or not (record[c] or "").strip())
                raise UserInputError(
                    f"profile {str(path)!r} line {line}: a mixed row needs column {missing!r} "
                    f"(mixed rows carry {', '.join(BATCH_COLUMNS)})")
            if explicit:
                parts = (int(float(record["prefill_seqs"])), int(float(record["prefill_tokens"])),
                         float(record["prefill_attention"]), int(float(record["decode_seqs"])),
                         int(float(record["decode_context"])))
                longest = (record.get("decode_max_context") or "").strip()
                max_context = int(float(longest)) if longest and parts[3] else 0
            elif phase == "prefill":
                parts = (seqs, seqs * max_len, float(seqs) * max_len * max_len, 0, 0)
                max_context = 0
            else:
                parts = (0, 0, 0.0, seqs, context)
                max_context = max_len
        except ValueError as err:
            raise UserInputError(f"profile {str(path)!r} line {line}: {err}") from err
        if seconds <= 0 or (parts[1] + parts[3]) <= 0:
            raise UserInputError(
                f"profile {str(path)!r} line {line}: needs positive time and at least one token")
        out["phase"].append(phase)
        for name, value in zip(_ARRAY_FIELDS[1:6], parts):
            out[name].append(value)
        out["decode_max_context"].append(max_context)
        out["seconds"].append(seconds)

    arrays = {name: np.asarray(values, dtype=float) for name, values in out.items() if name != "phase"}
    return ProfileRows(model=model, tp=tp, source=str(path), phase=np.asarray(out["phase"]),
                       **arrays)


def _seconds(record: dict[str, str]) -> float:
    wall = (record.get("iter_latency_s") or "").strip()
    if wall:
        return float(wall)
    value = (record.get("exec_s") or "").strip()
    if not value:
        raise ValueError("both iter_latency_s and exec_s are empty")
    return float(value)
