"""`python -m plugins.samullm_dry_run --file DAG_FILE --dag-id DAG_ID`: the SamuLLM application a
DAG would register, rendered with its default params, printed as one JSON line.

The plugin's dry-run view runs this in a child process, so that parsing user code never happens
inside the api-server; the runner then plans the application without running anything. Errors
(bad DAG, bad input) go to stderr as one line, exit code 2.

Templates see the DAG's default params and the real Airflow Variables (read from the metadata
database this process is configured for), so a dry run on a GPU host plans the real models.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from samullm.errors import UserInputError


def load_dag(path: str, dag_id: str) -> Any:
    """Import a DAG file and return the DAG named `dag_id` it defines."""
    from airflow.sdk import DAG

    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"DAG file {path!r} does not exist")
    sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(f"samullm_dry_run_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise UserInputError(f"{path}: cannot import the DAG file: {type(err).__name__}: {err}") from None
    dags = {d.dag_id: d for d in vars(module).values() if isinstance(d, DAG)}
    try:  # DAGs made by @dag functions are registered rather than assigned
        from airflow.sdk.definitions._internal.contextmanager import DagContext

        dags.update({d.dag_id: d for d, mod in DagContext.autoregistered_dags if mod is module})
    except ImportError:
        pass
    if dag_id not in dags:
        raise UserInputError(f"{path} defines no DAG {dag_id!r} (it defines {sorted(dags)})")
    return dags[dag_id]


class _Variables:
    """`var.value.get(key, default)` / `var.json.get(...)` in templates, read from the metadata
    database (no task is running, so the task SDK's accessors are not available)."""

    def __init__(self, deserialize_json: bool) -> None:
        self.deserialize_json = deserialize_json

    def get(self, key: str, default: Any = None) -> Any:
        from airflow.models.variable import Variable

        return Variable.get(key, default_var=default, deserialize_json=self.deserialize_json)

    def __getattr__(self, key: str) -> Any:
        return self.get(key)


def dry_run_application(dag: Any) -> dict[str, Any]:
    """The application of `dag` with its default params, as JSON-ready data."""
    from samullm_operators.dag_graph import build_dag_application
    from samullm_operators.operators import SamuLLMNodeOperator

    params = dag.params.dump() if hasattr(dag.params, "dump") else dict(dag.params)
    var = {"value": _Variables(False), "json": _Variables(True)}
    context = {"dag": dag, "dag_id": dag.dag_id, "params": params, "run_id": "dry_run", "var": var}
    built = build_dag_application(dag, context, None, SamuLLMNodeOperator)
    return built.application.model_dump(mode="json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.samullm_dry_run", description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--dag-id", required=True)
    args = parser.parse_args(argv)
    try:
        app = dry_run_application(load_dag(args.file, args.dag_id))
    except UserInputError as err:
        print(f"dry run of {args.dag_id}: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a template that needs a real run (Variables, macros...)
        print(f"dry run of {args.dag_id}: cannot render the DAG's SamuLLM tasks without a run: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
