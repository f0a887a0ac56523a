"""Rows of an application's datasets, and the checks that need them.

`load_rows` reads one dataset (inline rows, JSONL/JSON/CSV/Parquet file, or a request trace);
`resolve` loads every dataset of an application once and checks what needs the data: no dataset
is empty, every name a template reads is a column or an upstream node, no node is named like a
column, and every node keeps at least one row.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from samullm import templates
from samullm.errors import UserInputError
from samullm.graph import Application, Dataset, SyntheticSource, TraceSource

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The shared measured data: $SAMULLM_SHARED_DATA, else ../shared/data from the repo root."""
    env = os.environ.get("SAMULLM_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def resolve_path(path: str) -> Path:
    """`shared:traces/x.csv` names a file in the shared data folder; other paths are as given."""
    if path.startswith("shared:"):
        return shared_data_dir() / path[len("shared:"):].lstrip("/")
    return Path(path)


def _read_trace_column(path: Path, column: str) -> np.ndarray:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise UserInputError(f"trace {str(path)!r} has no {column!r} column (columns: {reader.fieldnames})")
        return np.array([int(float(r[column])) for r in reader], dtype=np.int64)


def load_trace_rows(source: TraceSource) -> list[dict[str, Any]]:
    """Rows with unknown text and known prompt token counts, drawn from a trace (seeded)."""
    path = resolve_path(source.path)
    if not path.is_file():
        raise UserInputError(f"trace file {str(path)!r} does not exist")
    counts = _read_trace_column(path, "num_prefill_tokens")
    if source.max_prompt_tokens is not None:
        counts = counts[counts <= source.max_prompt_tokens]
    if counts.size == 0:
        return []
    if source.num_rows is not None:
        rng = np.random.default_rng(source.seed)
        counts = counts[rng.choice(len(counts), size=source.num_rows, replace=source.num_rows > len(counts))]
    col = source.column
    if source.chunk_tokens is None:
        return [{col: "", f"{col}_tokens": int(c)} for c in counts]
    rows = []
    for c in counts:
        size = source.chunk_tokens
        parts = [size] * (int(c) // size) + ([int(c) % size] if int(c) % size else [])
        parts = parts[: source.max_chunks] if source.max_chunks else parts
        rows.append({col: [""] * len(parts), f"{col}_tokens": parts})
    return rows


def synthetic_rows(source: SyntheticSource) -> list[dict[str, Any]]:
    """Rows with prompt lengths drawn from the declared log-normal (seeded)."""
    rng = np.random.default_rng(source.seed)
    mean, std = source.mean_tokens, source.std_tokens
    if std > 0:
        sigma2 = np.log1p((std / mean) ** 2)
        counts = rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), source.num_rows)
    else:
        counts = np.full(source.num_rows, mean)
    counts = np.clip(np.rint(counts), source.min_tokens, source.max_tokens or np.inf).astype(np.int64)
    col = source.column
    return [{col: "", f"{col}_tokens": int(c)} for c in counts]


def _load_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserInputError(f"dataset file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open() as fh:
            return [json.loads(line) for line in fh if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise UserInputError(f"{path}: a JSON dataset must be a list of row objects")
        return data
    if suffix == ".csv":
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserInputError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        return pq.read_table(path).to_pylist()
    raise UserInputError(f"{path}: unknown dataset format {suffix!r}; use .jsonl, .json, .csv or .parquet")


def load_rows(dataset: Dataset) -> list[dict[str, Any]]:
    if dataset.rows is not None:
        rows = dataset.rows
    elif dataset.path is not None:
        rows = _load_file(resolve_path(dataset.path))
    elif dataset.trace is not None:
        rows = load_trace_rows(dataset.trace)
    else:
        rows = synthetic_rows(dataset.synthetic)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserInputError(f"dataset row {i} is not an object of columns")
    return rows


@dataclass
class LoadedDataset:
    name: str
    spec: Dataset
    rows: list[dict[str, Any]]

    @cached_property
    def columns(self) -> set[str]:
        cols: set[str] = set()
        for row in self.rows:
            cols.update(row)
        return cols

    @property
    def token_counts(self) -> dict[str, str]:
        source = self.spec.trace or self.spec.synthetic
        if source is not None:
            return {source.column: f"{source.column}_tokens", **self.spec.token_counts}
        return self.spec.token_counts


@dataclass
class ResolvedApp:
    """An application with its rows loaded and checked; `rows_of[node]` lists the row ids the
    node sees regardless of routing (a routed node's final rows are a subset, known only once
    its router has run)."""

    app: Application
    data: dict[str, LoadedDataset]
    rows_of: dict[str, np.ndarray]

    def dataset(self, node: str) -> LoadedDataset:
        return self.data[self.app.dataset_of(node)]


def resolve(app: Application) -> ResolvedApp:
    data: dict[str, LoadedDataset] = {}
    for name, spec in app.datasets.items():
        rows = load_rows(spec)
        if not rows:
            raise UserInputError(f"dataset {name!r} is empty: give it at least one row")
        data[name] = LoadedDataset(name, spec, rows)
        for text_col, count_col in data[name].token_counts.items():
            if count_col not in data[name].columns:
                raise UserInputError(f"dataset {name!r}: token_counts names column {count_col!r}, which no row has")
    node_names = {n.name for n in app.nodes}
    rows_of: dict[str, np.ndarray] = {}
    for node in app.nodes:
        ds = data[app.dataset_of(node.name)]
        clash = node_names & ds.columns
        if clash:
            raise UserInputError(f"dataset {ds.name!r} has columns named like nodes: {sorted(clash)}; rename the nodes")
        available = ds.columns | set(app.upstream(node.name))
        missing = sorted(node.template_names() - available)
        if missing:
            raise UserInputError(
                f"node {node.name!r} reads {missing}, which is neither a column of dataset {ds.name!r} "
                f"({sorted(ds.columns)}) nor an upstream node"
            )
        keep = np.arange(len(ds.rows))
        if node.where:
            cond = templates.compile_condition(node.where)
            try:
                keep = np.array([i for i, row in enumerate(ds.rows) if cond(**row)], dtype=np.int64)
            except Exception as err:  # a filter failing on some row is the user's to fix
                raise UserInputError(f"node {node.name!r}: where {node.where!r} fails on a row: {err}") from None
            if keep.size == 0:
                raise UserInputError(f"node {node.name!r}: where {node.where!r} keeps no row of dataset {ds.name!r}")
        rows_of[node.name] = keep
    for node in app.nodes:  # a routed node sees its router's rows
        if node.route is not None:
            rows_of[node.name] = np.intersect1d(rows_of[node.name], rows_of[node.route.router])
    return ResolvedApp(app, data, rows_of)
