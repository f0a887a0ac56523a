"""DAGs that are wrong on purpose: each must fail its SamuLLM task quickly with a message that
says what is wrong (tests/airflow/test_e2e.py). No retries: the failure is the point."""

from __future__ import annotations

from airflow.sdk import DAG

from samullm_operators import SamuLLMNodeOperator

ROWS = [{"question": "Why is the sky blue?"}, {"question": "What is a prime number?"}]
ARGS = {"retries": 0}


def single_node_dag(dag_id: str, **node) -> DAG:
    with DAG(dag_id, schedule=None, catchup=False, default_args=ARGS, tags=["samullm-test"]) as dag:
        SamuLLMNodeOperator(task_id="answer", dataset=ROWS, **{"model": "tiny:tiny-s", "prompt": "Q: {{ question }}", **node})
    return dag


bad_model = single_node_dag("samullm_bad_model", model="/nonexistent/model")
too_big = single_node_dag("samullm_too_big", model="Llama-2-70b-chat-hf")
missing_column = single_node_dag("samullm_missing_column", prompt="Q: {{ question }} {{ topic }}")
runner_down = single_node_dag("samullm_runner_down", samullm_conn_id="samullm_down")
wrong_secret = single_node_dag("samullm_wrong_secret", samullm_conn_id="samullm_wrong_secret")

with DAG("samullm_missing_upstream", schedule=None, catchup=False, default_args=ARGS, tags=["samullm-test"]) as missing_upstream:
    first = SamuLLMNodeOperator(task_id="first", model="tiny:tiny-s", dataset=ROWS, prompt="{{ question }}")
    # `second` reads `first` but nothing orders them: Airflow could run it first.
    second = SamuLLMNodeOperator(task_id="second", model="tiny:tiny-s", prompt="{{ question }} {{ first }}")
