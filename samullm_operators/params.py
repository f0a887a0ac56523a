"""Template helpers for DAG files."""

from __future__ import annotations


def model_param(param: str) -> str:
    """An Airflow template for `model=`: the model the DAG param `param` names, unless the Airflow
    Variable `samullm_<param>` overrides it (how the example DAGs switch from tiny CPU models to
    real ones on a GPU host without editing the file)."""
    return "{{ var.value.get('samullm_%s', params.%s) }}" % (param, param)
