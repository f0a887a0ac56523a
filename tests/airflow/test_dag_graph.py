"""Building a DAG run's SamuLLM application from the DAG's tasks (in-process, no Airflow server)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("airflow.sdk")

from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

from samullm.errors import UserInputError
from samullm_operators import SamuLLMNodeOperator
from samullm_operators.dag_graph import build_dag_application, node_name_for, results_location

ROWS = [{"q": "one"}, {"q": "two"}]


def build(dag, params=None, current=None):
    context = {"dag": dag, "params": params or dag.params.dump(), "run_id": "manual__1", "var": {}}
    return build_dag_application(dag, context, current, SamuLLMNodeOperator)


def test_node_names_are_template_variables():
    assert node_name_for("answer-a") == "answer_a"
    assert node_name_for("group.judge") == "group_judge"
    assert node_name_for("1st") == "_1st"


def test_ensemble_graph_edges_datasets_and_rendering():
    with DAG("ens", schedule=None, params={"m": "model-x", "n": 7}) as dag:
        a = SamuLLMNodeOperator(task_id="answer-a", model="{{ params.m }}", dataset=ROWS, prompt="{{ q }}",
                                sampling={"max_tokens": "{{ params.n }}", "temperature": "0.5"})
        b = SamuLLMNodeOperator(task_id="answer_b", model="m2", dataset=ROWS, prompt="{{ q }}!")
        judge = SamuLLMNodeOperator(task_id="judge", model="m3", prompt="{{ q }} {{ answer_a }} {{ answer_b }}")
        [a, b] >> judge
    built = build(dag)
    app = built.application
    assert [n.name for n in app.nodes] == ["answer_a", "answer_b", "judge"]
    assert list(app.datasets) == ["rows"]  # equal specifications are one dataset
    assert app.node("judge").dataset == "rows"  # inherited from its upstream tasks
    assert app.node("judge").depends_on == ["answer_a", "answer_b"]
    assert app.upstream("judge") == ["answer_a", "answer_b"]
    assert app.node("answer_a").model == "model-x"
    assert app.node("answer_a").sampling.max_tokens == 7 and app.node("answer_a").sampling.temperature == 0.5
    assert built.node_of_task == {"answer-a": "answer_a", "answer_b": "answer_b", "judge": "judge"}
    assert built.context == {"params": {"m": "model-x", "n": 7}, "dag_id": "ens", "run_id": "manual__1"}
    # Other tasks were rendered on copies: the DAG's own operators keep their templates.
    assert a.model == "{{ params.m }}" and a.sampling["max_tokens"] == "{{ params.n }}"


def test_reading_a_task_that_does_not_run_before_fails_with_the_fix():
    with DAG("bad_order", schedule=None) as dag:
        SamuLLMNodeOperator(task_id="a", model="m", dataset=ROWS, prompt="{{ q }}")
        SamuLLMNodeOperator(task_id="b", model="m", dataset=ROWS, prompt="{{ q }} {{ a }}")
    with pytest.raises(UserInputError, match=r"add `a >> b`"):
        build(dag)
    with DAG("bad_order_no_dataset", schedule=None) as dag:
        SamuLLMNodeOperator(task_id="a", model="m", dataset=ROWS, prompt="{{ q }}")
        SamuLLMNodeOperator(task_id="b", model="m", prompt="{{ q }} {{ a }}")
    with pytest.raises(UserInputError, match=r"add `a >> b`"):  # the cause, not the missing dataset
        build(dag)


def test_samullm_ancestors_through_other_tasks_are_dependencies():
    with DAG("through", schedule=None) as dag:
        a = SamuLLMNodeOperator(task_id="a", model="m", dataset=ROWS, prompt="{{ q }}")
        middle = EmptyOperator(task_id="check")
        b = SamuLLMNodeOperator(task_id="b", model="m", prompt="{{ q }}")
        a >> middle >> b
    app = build(dag).application
    assert app.node("b").depends_on == ["a"]
    assert app.node("b").dataset == app.node("a").dataset


def test_a_task_without_dataset_and_without_upstream_is_refused():
    with DAG("nodata", schedule=None) as dag:
        SamuLLMNodeOperator(task_id="a", model="m", prompt="{{ q }}")
    with pytest.raises(UserInputError, match="task 'a' has no dataset"):
        build(dag)


def test_relative_paths_are_relative_to_the_dag_file(tmp_path: Path):
    with DAG("paths", schedule=None) as dag:
        SamuLLMNodeOperator(task_id="a", model="m", dataset="data/q.jsonl", prompt="{{ q }}")
        SamuLLMNodeOperator(task_id="b", model="m", dataset="shared:traces/x.csv", prompt="{{ q }}")
    dag.fileloc = str(tmp_path / "my_dag.py")
    app = build(dag).application
    assert app.datasets["q"].path == str(tmp_path / "data" / "q.jsonl")
    assert app.datasets["x"].path == "shared:traces/x.csv"


def test_route_names_the_router_task_and_needs_the_order():
    with DAG("route", schedule=None) as dag:
        router = SamuLLMNodeOperator(task_id="the-router", model="m", dataset=ROWS, prompt="{{ q }}")
        expert = SamuLLMNodeOperator(task_id="expert", model="m", prompt="{{ q }}",
                                     route={"router": "the-router", "equals": "yes", "share": "0.5"})
        router >> expert
    node = build(dag).application.node("expert")
    assert node.route.router == "the_router" and node.route.share == 0.5


def test_prompt_context_keys_are_registered_and_values_sent_per_node():
    with DAG("ctx", schedule=None, params={"lang": "French"}) as dag:
        SamuLLMNodeOperator(task_id="a", model="m", dataset=ROWS, prompt="{{ q }} in {{ lang }}",
                            prompt_context={"lang": "{{ params.lang }}"})
        SamuLLMNodeOperator(task_id="b", model="m", dataset=ROWS, prompt="{{ q }} {{ params.lang }}")
    built = build(dag)
    assert built.context["lang"] == "French"
    assert built.node_context == {"a": {"lang": "French"}, "b": {}}


def test_results_locations_must_agree():
    with DAG("res", schedule=None) as dag:
        SamuLLMNodeOperator(task_id="a", model="m", dataset=ROWS, prompt="{{ q }}", results="/tmp/r1")
        SamuLLMNodeOperator(task_id="b", model="m", dataset=ROWS, prompt="{{ q }}", results="/tmp/r2")
    with pytest.raises(UserInputError, match="different results locations"):
        build(dag)


def test_object_storage_paths_travel_as_urls():
    from airflow.sdk import ObjectStoragePath

    assert results_location(ObjectStoragePath("s3://aws_default@bucket/runs")) == "s3://bucket/runs"
    assert results_location(ObjectStoragePath("file:///tmp/res")) == "/tmp/res"
    assert results_location("/data/out") == "/data/out"
    assert results_location(None) is None


def test_bad_node_fields_are_reported_with_the_dag():
    with DAG("badsampling", schedule=None) as dag:
        SamuLLMNodeOperator(task_id="a", model="m", dataset=ROWS, prompt="{{ q }}", sampling={"max_tokens": 0})
    with pytest.raises(UserInputError, match="DAG 'badsampling'.*max_tokens"):
        build(dag)


def test_the_running_task_is_taken_as_airflow_rendered_it():
    with DAG("current", schedule=None, params={"m": "from-param"}) as dag:
        a = SamuLLMNodeOperator(task_id="a", model="{{ params.m }}", dataset=ROWS, prompt="{{ q }}")
    # The running task is not rendered a second time (Airflow did it before execute) ...
    assert build(dag, current=a).application.node("a").model == "{{ params.m }}"
    # ... other tasks are rendered on copies.
    assert build(dag).application.node("a").model == "from-param"
