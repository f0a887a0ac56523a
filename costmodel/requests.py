"""Request sets: the prompt lengths a model will be run on (and, from a trace, the output lengths
it really produced).

Trace CSVs (../shared/data/traces/*.csv) have one row per request with `num_prefill_tokens`
(prompt) and `num_decode_tokens` (output) columns; other columns are ignored.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from costmodel.errors import UserInputError
from costmodel.paths import shared_data

INPUT_COLUMN = "num_prefill_tokens"
OUTPUT_COLUMN = "num_decode_tokens"
TRACES = "traces"


@dataclass(frozen=True, eq=False)
class RequestSet:
    """Prompt tokens per request, in submission order; output tokens when known (a trace)."""

    input_lens: np.ndarray
    output_lens: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        inputs = np.asarray(self.input_lens, dtype=np.int64)
        if inputs.ndim != 1 or np.any(inputs < 1):
            raise UserInputError(f"{self.source or 'request set'}: prompt lengths must be a list "
                                 f"of positive token counts")
        object.__setattr__(self, "input_lens", inputs)
        if self.output_lens is not None:
            outputs = np.asarray(self.output_lens, dtype=np.int64)
            if outputs.shape != inputs.shape or np.any(outputs < 1):
                raise UserInputError(f"{self.source or 'request set'}: output lengths must be "
                                     f"positive, one per request")
            object.__setattr__(self, "output_lens", outputs)

    def __len__(self) -> int:
        return int(self.input_lens.size)

    def take(self, index: np.ndarray, source: str | None = None) -> RequestSet:
        outputs = None if self.output_lens is None else self.output_lens[index]
        return RequestSet(self.input_lens[index], outputs,
                          self.source if source is None else source)

    def subsample(self, n: int, seed: int = 0) -> RequestSet:
        """n requests drawn without replacement, kept in their original order."""
        if not 1 <= n <= len(self):
            raise UserInputError(f"cannot draw {n} requests from {len(self)} "
                                 f"({self.source or 'request set'})")
        index = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.take(index, f"{self.source} ({n} drawn, seed {seed})")

    def split(self, fraction: float = 0.5, seed: int = 0) -> tuple[RequestSet, RequestSet]:
        """Two disjoint random parts (sizes fraction and 1 - fraction), each in original order."""
        if not 0.0 < fraction < 1.0 or len(self) < 2:
            raise UserInputError("split needs 0 < fraction < 1 and at least two requests")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = min(max(int(round(fraction * len(self))), 1), len(self) - 1)
        return (self.take(np.sort(order[:cut]), f"{self.source} (part 1 of split, seed {seed})"),
                self.take(np.sort(order[cut:]), f"{self.source} (part 2 of split, seed {seed})"))

    def fitting(self, max_model_len: int) -> RequestSet:
        """Only the requests a max_model_len engine can run: prompt < max_model_len and, when
        outputs are known, prompt + output <= max_model_len."""
        keep = self.input_lens < max_model_len
        if self.output_lens is not None:
            keep &= self.input_lens + self.output_lens <= max_model_len
        return self.take(np.flatnonzero(keep),
                         f"{self.source} (fitting max_model_len {max_model_len})")


def trace_path(name: str) -> Path:
    """A trace CSV of the shared data folder, by file name (with or without .csv)."""
    file = name if name.endswith(".csv") else f"{name}.csv"
    return shared_data(TRACES) / file


def load_request_csv(path: str | os.PathLike) -> RequestSet:
    """Read a trace CSV (num_prefill_tokens, and num_decode_tokens when present)."""
    path = Path(path).expanduser()
    if not path.is_file():
        if not path.is_absolute() and trace_path(path.name).is_file() and path.parent == Path("."):
            path = trace_path(path.name)
        else:
            raise UserInputError(f"request file {str(path)!r} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            if INPUT_COLUMN not in columns:
                raise UserInputError(
                    f"request file {str(path)!r} has no {INPUT_COLUMN!r} column (columns: "
                    f"{', '.join(columns) or 'none'}); it needs {INPUT_COLUMN} and optionally "
                    f"{OUTPUT_COLUMN}, one row per request")
            has_outputs = OUTPUT_COLUMN in columns
            inputs, outputs = [], []
            for line, row in enumerate(reader, start=2):
                inputs.append(_count(row.get(INPUT_COLUMN), path, line, INPUT_COLUMN))
                if has_outputs:
                    outputs.append(_count(row.get(OUTPUT_COLUMN), path, line, OUTPUT_COLUMN))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise UserInputError(f"cannot read request file {str(path)!r}: {err}") from err
    if not inputs:
        raise UserInputError(f"request file {str(path)!r} has no requests")
    return RequestSet(np.array(inputs, dtype=np.int64),
                      np.array(outputs, dtype=np.int64) if has_outputs else None,
                      source=path.name)


def _count(text: str | None, path: Path, line: int, column: str) -> int:
    try:
        value = float(text) if text is not None else float("nan")
    except ValueError:
        value = float("nan")
    if not value >= 1 or value != int(value):
        raise UserInputError(f"{path.name} line {line}: {column} is {text!r}; expected a whole "
                             f"number of tokens >= 1")
    return int(value)
