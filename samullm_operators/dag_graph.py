"""The SamuLLM application of a DAG run, built from the DAG's SamuLLM tasks.

The first SamuLLM task of a run registers the whole graph with the runner, so it needs every
SamuLLM task's fields as this run renders them: in the task process `context["dag"]` holds the
DAG file's real operator objects, with *unrendered* fields for tasks other than the running one.
Each is rendered on a shallow copy with the running task's context (the originals stay as they
are).

What becomes of the DAG:
- each SamuLLM task is a node named `node_name` (default: the task id with every character
  outside [A-Za-z0-9_] replaced by `_`): that is the name other prompts read its output under;
- a node's dataset is its `dataset`, or, if it gives none, the one dataset of the SamuLLM tasks
  upstream of it; equal dataset specifications are one dataset; relative file paths are relative
  to the DAG file's folder;
- SamuLLM tasks upstream of a task in the DAG (through any other tasks) become `depends_on`, and a
  node whose prompt or route reads another node must run after it in the DAG (otherwise Airflow
  could start it first): checked here, with the fix in the message;
- the registration context: `params`, `dag_id`, `run_id` and every task's `prompt_context` keys.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samullm.errors import UserInputError
from samullm.graph import Application, application_from_dict
from samullm.templates import referenced_names

_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")
TINY_PREFIX = "tiny:"


def resolve_model(model: str) -> str:
    """`tiny:PRESET` -> the directory of that random-weight preset, made on first use (seconds,
    once per machine); any other name is the runner's to load."""
    if model.startswith(TINY_PREFIX):
        from samullm.tinymodel import cached_preset

        return str(cached_preset(model[len(TINY_PREFIX):]))
    return model


def node_name_for(task_id: str) -> str:
    """The default node name of a task: usable as a template variable."""
    name = _NOT_NAME.sub("_", task_id)
    return name if not name[:1].isdigit() else f"_{name}"


def json_safe(value: Any) -> Any:
    """A JSON round trip (dates and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


def results_location(value: Any) -> str | None:
    """A result location as the runner takes it: a local path or an fsspec URL.

    An `ObjectStoragePath` keeps its protocol and path; its Airflow connection id does not
    travel (the runner reaches storage with its own credentials)."""
    if value is None or value == "":
        return None
    protocol = getattr(value, "protocol", None)
    if protocol is not None and hasattr(value, "path"):
        return str(value.path) if protocol in ("file", "local", "") else f"{protocol}://{value.path}"
    return str(value)


@dataclass
class DagApplication:
    """The application of one DAG run, plus what registration needs beside it."""

    application: Application
    node_of_task: dict[str, str]
    results_uri: str | None
    context: dict[str, Any] = field(default_factory=dict)
    node_context: dict[str, dict[str, Any]] = field(default_factory=dict)


def _dataset_spec(value: Any, dag_folder: Path | None, task_id: str) -> dict[str, Any]:
    """A task's `dataset` as a samullm.graph.Dataset dict.

    Accepts a file path or `shared:` path (string), a list of row objects, or a Dataset dict
    (`rows`, `path`, `trace` or `synthetic`)."""
    if isinstance(value, (str, Path)):
        spec: dict[str, Any] = {"path": str(value)}
    elif isinstance(value, list):
        spec = {"rows": value}
    elif isinstance(value, Mapping):
        spec = copy.deepcopy(dict(value))
    else:
        raise UserInputError(
            f"task {task_id!r}: dataset must be a file path, a list of rows or a dataset dict "
            f"(rows/path/trace/synthetic), got {type(value).__name__}"
        )
    for key, holder in (("path", spec), ("path", spec.get("trace") or {})):
        path = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(path, str) and dag_folder is not None and not path.startswith("shared:") \
                and "://" not in path and not Path(path).is_absolute():
            holder[key] = str((dag_folder / path).resolve())
    return json_safe(spec)


def _dataset_names(specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """task_id -> dataset name; equal specifications share one name."""
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for task_id, spec in specs.items():
        key = json.dumps(spec, sort_keys=True)
        if key not in seen:
            source = spec.get("path") or (spec.get("trace") or {}).get("path")
            stem = node_name_for(Path(str(source)).stem) if source else "rows"
            base, n = stem or "data", 2
            name = base
            while name in seen.values():
                name, n = f"{base}_{n}", n + 1
            seen[key] = name
        names[task_id] = seen[key]
    return names


def _rendered(task: Any, current: Any, context: Mapping[str, Any]) -> Any:
    if task is current:
        return task  # already rendered by Airflow for this try
    clone = copy.copy(task)
    clone.render_template_fields(context)
    return clone


def build_dag_application(dag: Any, context: Mapping[str, Any], current: Any, operator_type: type) -> DagApplication:
    """The application of the SamuLLM tasks (`operator_type`) of `dag`, rendered for this run."""
    tasks = [t for t in dag.tasks if isinstance(t, operator_type)]
    if not tasks:
        raise UserInputError(f"DAG {dag.dag_id!r} has no SamuLLM task")
    rendered = {t.task_id: _rendered(t, current, context) for t in tasks}
    node_of = {t.task_id: t.node_name for t in rendered.values()}
    dupes = sorted({n for n in node_of.values() if list(node_of.values()).count(n) > 1})
    if dupes:
        raise UserInputError(f"DAG {dag.dag_id!r}: several SamuLLM tasks have the node name(s) {dupes}; give them distinct node_name=")
    task_of = {n: t for t, n in node_of.items()}
    ancestors = {t.task_id: t.get_flat_relative_ids(upstream=True) & set(node_of) for t in tasks}
    fileloc = getattr(dag, "fileloc", None)
    dag_folder = Path(fileloc).resolve().parent if fileloc else None

    # What each task reads (prompt names, router) must run before it in the DAG.
    routes: dict[str, dict[str, Any] | None] = {}
    for task_id, task in rendered.items():
        name = node_of[task_id]
        reads = (referenced_names(task.prompt) & set(task_of)) - {name}
        route = json_safe(task.route) if task.route else None
        if route is not None:
            router = route.get("router")
            route["router"] = node_of.get(router, router)  # a task id or a node name
            reads.add(route["router"])
        for up in sorted(reads):
            if up in task_of and task_of[up] not in ancestors[task_id]:
                raise UserInputError(
                    f"task {task_id!r} reads the output of {task_of[up]!r} but does not run after it in the DAG: "
                    f"add `{task_of[up]} >> {task_id}`"
                )
        routes[task_id] = route

    # Datasets: given, or inherited from the SamuLLM tasks upstream (in DAG order).
    specs: dict[str, dict[str, Any]] = {}
    order = _task_order(tasks, ancestors)
    for task_id in order:
        task = rendered[task_id]
        if task.dataset is not None:
            specs[task_id] = _dataset_spec(task.dataset, dag_folder, task_id)
            continue
        inherited = {json.dumps(specs[a], sort_keys=True) for a in ancestors[task_id] if a in specs}
        if len(inherited) != 1:
            why = "no SamuLLM task upstream of it gives one" if not inherited else "its upstream SamuLLM tasks read different datasets"
            raise UserInputError(f"task {task_id!r} has no dataset and {why}: pass dataset=... to it")
        specs[task_id] = json.loads(inherited.pop())
    ds_name = _dataset_names(specs)
    datasets = {}
    for task_id, name in ds_name.items():
        datasets[name] = specs[task_id]

    nodes = []
    for task_id in order:
        task = rendered[task_id]
        name = node_of[task_id]
        route = routes[task_id]
        node: dict[str, Any] = {
            "name": name,
            "model": resolve_model(str(task.model).strip()),
            "prompt": task.prompt,
            "dataset": ds_name[task_id],
            "depends_on": sorted(node_of[a] for a in ancestors[task_id]),
            "sampling": json_safe(task.sampling or {}),
            "engine": json_safe(task.engine or {}),
        }
        for key, value in (("where", task.where), ("route", route), ("plan", json_safe(task.plan) if task.plan else None),
                           ("output_lengths", task.output_lengths)):
            if value not in (None, "", {}):
                node[key] = value
        nodes.append(node)

    app = application_from_dict({"name": dag.dag_id, "datasets": datasets, "nodes": nodes},
                                source=f"DAG {dag.dag_id!r}")
    results = {results_location(rendered[t].results) for t in order} - {None}
    if len(results) > 1:
        raise UserInputError(f"DAG {dag.dag_id!r}: SamuLLM tasks give different results locations {sorted(results)}; "
                             "one run writes all its columns under one location")
    base_context = run_context(context)
    node_context = {node_of[t]: json_safe(dict(rendered[t].prompt_context or {})) for t in order}
    merged = dict(base_context)
    for values in node_context.values():
        for key, value in values.items():
            merged.setdefault(key, value)
    return DagApplication(app, node_of, results.pop() if results else None, merged, node_context)


def run_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """What every prompt may read from Airflow: `params`, `dag_id` and `run_id`."""
    params = context.get("params") or {}
    dag = context.get("dag")
    return {
        "params": json_safe({k: params[k] for k in params}),
        "dag_id": getattr(dag, "dag_id", None),
        "run_id": context.get("run_id"),
    }


def _task_order(tasks: Iterable[Any], ancestors: dict[str, set[str]]) -> list[str]:
    """Task ids, each after its SamuLLM ancestors, otherwise in the DAG's order."""
    from graphlib import TopologicalSorter

    ids = [t.task_id for t in tasks]
    sorter = TopologicalSorter({t: ancestors[t] for t in ids})
    sorter.prepare()
    out: list[str] = []
    position = {t: i for i, t in enumerate(ids)}
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        out.extend(ready)
        sorter.done(*ready)
    return out
