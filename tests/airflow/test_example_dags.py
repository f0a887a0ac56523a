"""The example DAGs parse, and their SamuLLM tasks make valid applications whose prompts read
only columns of their data and upstream nodes (checked by samullm.datasets.resolve)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("airflow.sdk")

from plugins.samullm_dry_run import load_dag  # noqa: E402
from samullm.datasets import resolve  # noqa: E402
from samullm_operators import SamuLLMNodeOperator  # noqa: E402
from samullm_operators.dag_graph import build_dag_application  # noqa: E402

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {
    "samullm_ensemble": {"answer_a": [], "answer_b": [], "judge": ["answer_a", "answer_b"]},
    "samullm_routing": {"router": [], "science_expert": ["router"], "chat_expert": ["router"]},
    "samullm_chain_summary": {"summarize_0": [], "summarize_1": ["summarize_0"], "summarize_2": ["summarize_0", "summarize_1"]},
    "samullm_mixed": {"answer_a": [], "answer_b": [], "judge": ["answer_a", "answer_b"], "summarize_0": [],
                      "summarize_1": ["summarize_0"]},
}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_example_dag_builds_a_valid_application(dag_id, tiny_model_dir):
    tiny_model_dir("tiny-s"), tiny_model_dir("tiny-m")  # the default params name these presets
    dag = load_dag(str(DAGS / f"{dag_id}.py"), dag_id)
    # No Airflow Variable is set: `var.value.get(name, default)` gives the param's default.
    context = {"dag": dag, "params": dag.params.dump(), "run_id": "test", "var": {"value": {}, "json": {}}}
    built = build_dag_application(dag, context, None, SamuLLMNodeOperator)
    app = built.application
    assert {n.name: n.depends_on for n in app.nodes} == EXPECTED[dag_id]
    assert all(Path(n.model).is_dir() for n in app.nodes)  # tiny:PRESET became the preset's directory
    resolved = resolve(app)  # every name a prompt or filter reads exists
    assert all(len(resolved.rows_of[n.name]) > 0 for n in app.nodes)
