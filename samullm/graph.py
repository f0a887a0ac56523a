"""The application graph: datasets, LLM nodes, and the edges their prompts imply.

An application is one or more datasets (rows) and LLM nodes that each add a column: a node runs
one model over the rows of its dataset (all of them, those a `where` filter keeps, or those a
router sent to it), with a Jinja prompt over the row's columns and upstream nodes' outputs
(`{{ question }}`, `{{ vicuna }}`). Edges come from the names a prompt reads, plus explicit
`depends_on`, plus the router of a routed node. Loadable from YAML/JSON (`load_application`),
buildable in Python, and plain pydantic so it travels as JSON (the Airflow side sends it).

Structure is checked when the model is built (unique names, known edges, no cycle, templates
parse); checks that need the data (columns a template names, empty datasets) run in
`samullm.datasets.resolve`, still before any planning.
"""

from __future__ import annotations

import json
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from samullm import templates
from samullm.errors import UserInputError

TP_DEGREES = (1, 2, 4, 8)
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"  # a node name is also a template variable


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingParams(_Strict):
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False


class EngineOptions(_Strict):
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    enforce_eager: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)  # passed to the engine as given


class PinnedPlan(_Strict):
    """A plan the user fixes for a node: TP degree, data-parallel replicas, optionally devices."""

    tp: int = 1
    dp: int = Field(1, ge=1)
    devices: list[int] | None = None

    @field_validator("tp")
    @classmethod
    def _tp_degree(cls, tp: int) -> int:
        if tp not in TP_DEGREES:
            raise ValueError(f"tp must be one of {TP_DEGREES}, got {tp}")
        return tp

    @model_validator(mode="after")
    def _device_count(self) -> PinnedPlan:
        if self.devices is not None:
            if len(self.devices) != self.tp * self.dp:
                raise ValueError(f"devices lists {len(self.devices)} ids but tp*dp = {self.tp * self.dp}")
            if len(set(self.devices)) != len(self.devices):
                raise ValueError("devices repeats an id")
        return self


class Route(_Strict):
    """The node takes the rows whose `router` output (stripped, case-folded) equals `equals`.

    Until the router has run, the planner assumes `share` of the router's rows (default: an
    equal split among the router's routed nodes)."""

    router: str
    equals: str
    share: float | None = Field(None, gt=0.0, le=1.0)


class TraceSource(_Strict):
    """Rows made from a request trace CSV (`num_prefill_tokens` column): text unknown, token
    counts known. Each row gets `column` (empty text) and `{column}_tokens`. With `chunk_tokens`
    a row is a document cut into chunks of that many tokens (at most `max_chunks`): `column`
    is then a list of chunks and `{column}_tokens` their counts. `max_prompt_tokens` keeps only
    trace requests up to that length (before drawing `num_rows`, seeded, with replacement only
    if the trace is too short)."""

    path: str
    num_rows: int | None = Field(None, ge=1)
    seed: int = 0
    column: str = "prompt"
    max_prompt_tokens: int | None = Field(None, ge=1)
    chunk_tokens: int | None = Field(None, ge=1)
    max_chunks: int | None = Field(None, ge=1)


class SyntheticSource(_Strict):
    """`num_rows` rows whose prompts are known only by a declared length distribution: token
    counts drawn (seeded) from a log-normal with this mean and standard deviation, clipped to
    [min_tokens, max_tokens]. Each row gets `column` (empty text) and `{column}_tokens`."""

    num_rows: int = Field(ge=1)
    mean_tokens: float = Field(gt=0)
    std_tokens: float = Field(0.0, ge=0)
    min_tokens: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int = 0
    column: str = "prompt"


class Dataset(_Strict):
    """Rows from exactly one source: inline `rows`, a file `path` (.jsonl/.json/.csv/.parquet),
    a request `trace`, or a `synthetic` length distribution. `token_counts` maps a text column
    to a column holding its token count (a list of counts for a list column), used instead of
    estimating from the text."""

    rows: list[dict[str, Any]] | None = None
    path: str | None = None
    trace: TraceSource | None = None
    synthetic: SyntheticSource | None = None
    token_counts: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> Dataset:
        given = [k for k in ("rows", "path", "trace", "synthetic") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a dataset needs exactly one of rows, path, trace, synthetic (got {given or 'none'})")
        return self


class LLMNode(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    model: str
    prompt: str
    dataset: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    where: str | None = None
    route: Route | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    engine: EngineOptions = Field(default_factory=EngineOptions)
    plan: PinnedPlan | None = None
    output_lengths: str | None = None  # model whose length distribution to assume (default: model)

    def template_names(self) -> set[str]:
        names = templates.referenced_names(self.prompt)
        if self.where:
            names |= templates.condition_names(self.where)
        return names


class Application(_Strict):
    name: str = "app"
    datasets: dict[str, Dataset]
    nodes: list[LLMNode]

    @model_validator(mode="before")
    @classmethod
    def _single_dataset(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dataset" in data:
            if "datasets" in data:
                raise ValueError("give either `dataset` or `datasets`, not both")
            data = dict(data)
            data["datasets"] = {"default": data.pop("dataset")}
        return data

    @model_validator(mode="after")
    def _structure(self) -> Application:
        if not self.nodes:
            raise ValueError("the application has no nodes")
        if not self.datasets:
            raise ValueError("the application has no dataset")
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names repeat: {dupes}")
        for node in self.nodes:
            templates.check_syntax(node.prompt, f"node {node.name!r} prompt")
            if node.where:
                templates.compile_condition(node.where)
            if node.dataset is None and len(self.datasets) > 1:
                raise ValueError(f"node {node.name!r} must name its dataset, one of {sorted(self.datasets)}")
            if node.dataset is not None and node.dataset not in self.datasets:
                raise ValueError(f"node {node.name!r} names unknown dataset {node.dataset!r}; known: {sorted(self.datasets)}")
            for dep in node.depends_on:
                if dep not in names:
                    raise ValueError(f"node {node.name!r} depends on unknown node {dep!r}; known: {names}")
            if node.route is not None and node.route.router not in names:
                raise ValueError(f"node {node.name!r} is routed by unknown node {node.route.router!r}")
            if node.name in templates.referenced_names(node.prompt) or node.name in node.depends_on:
                raise ValueError(f"node {node.name!r} reads its own output")
            if node.where and templates.condition_names(node.where) & set(names):
                raise ValueError(f"node {node.name!r}: `where` may read columns only; select rows by an upstream output with `route`")
        order = self.topological_order()  # raises on a cycle
        del order
        for node in self.nodes:
            if node.route is not None and self.dataset_of(node.route.router) != self.dataset_of(node.name):
                raise ValueError(f"node {node.name!r} and its router {node.route.router!r} must share a dataset")
            for up in self.upstream(node.name):
                if self.dataset_of(up) != self.dataset_of(node.name):
                    raise ValueError(f"node {node.name!r} reads {up!r}, which runs over another dataset")
        return self

    # --- graph queries -------------------------------------------------------------------

    def node(self, name: str) -> LLMNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UserInputError(f"unknown node {name!r}; known: {[n.name for n in self.nodes]}")

    def dataset_of(self, name: str) -> str:
        node = self.node(name)
        return node.dataset if node.dataset is not None else next(iter(self.datasets))

    def upstream(self, name: str) -> list[str]:
        """Nodes whose outputs `name` reads or waits for, in declaration order."""
        node = self.node(name)
        names = {n.name for n in self.nodes}
        wanted = (templates.referenced_names(node.prompt) & names) | set(node.depends_on)
        if node.route is not None:
            wanted.add(node.route.router)
        wanted.discard(name)
        return [n.name for n in self.nodes if n.name in wanted]

    def prompt_inputs(self, name: str) -> list[str]:
        """Upstream nodes whose output text appears in `name`'s prompt."""
        names = {n.name for n in self.nodes}
        refs = templates.referenced_names(self.node(name).prompt) & names
        return [n.name for n in self.nodes if n.name in refs]

    def downstream(self, name: str) -> list[str]:
        return [n.name for n in self.nodes if name in self.upstream(n.name)]

    def routed_by(self, router: str) -> list[str]:
        return [n.name for n in self.nodes if n.route is not None and n.route.router == router]

    def topological_order(self) -> list[str]:
        deps = {}
        names = {n.name for n in self.nodes}
        for node in self.nodes:
            refs = (templates.referenced_names(node.prompt) & names) | set(node.depends_on)
            if node.route is not None:
                refs.add(node.route.router)
            deps[node.name] = refs
        try:
            sorter = TopologicalSorter(deps)
            return list(sorter.static_order())
        except CycleError as err:
            cycle = " -> ".join(err.args[1])
            raise ValueError(f"the nodes form a cycle: {cycle}") from None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_defaults=True)


def _parse_application(data: Any, source: str) -> Application:
    try:
        return Application.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "application"
        raise UserInputError(f"{source}: {where}: {first['msg']}") from None
    except UserInputError as err:
        raise UserInputError(f"{source}: {err}") from None


def application_from_dict(data: dict[str, Any], source: str = "application") -> Application:
    """Build and check an application from plain data (the JSON the Airflow side sends)."""
    return _parse_application(data, source)


def load_application(path: str | Path) -> Application:
    """Read an application from a YAML or JSON file. Relative dataset paths are resolved
    against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"application file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise UserInputError(f"{path}: cannot parse: {err}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping with `dataset(s)` and `nodes`")
    app = _parse_application(data, str(path))
    for ds in app.datasets.values():
        if ds.path is not None and not Path(ds.path).is_absolute() and not ds.path.startswith("shared:"):
            ds.path = str((path.parent / ds.path).resolve())
        if ds.trace is not None and not Path(ds.trace.path).is_absolute() and not ds.trace.path.startswith("shared:"):
            ds.trace.path = str((path.parent / ds.trace.path).resolve())
    return app
