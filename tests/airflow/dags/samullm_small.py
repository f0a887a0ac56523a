"""A one-node DAG over four rows: the smallest real SamuLLM run (the Postgres-backed test)."""

from __future__ import annotations

from airflow.sdk import DAG

from samullm_operators import SamuLLMNodeOperator

with DAG("samullm_small", schedule=None, catchup=False, default_args={"retries": 1}, tags=["samullm-test"]) as dag:
    SamuLLMNodeOperator(
        task_id="answer",
        model="tiny:tiny-s",
        dataset=[{"question": f"question {i}"} for i in range(4)],
        prompt="Q: {{ question }}\nA:",
        sampling={"max_tokens": 8, "ignore_eos": True},
    )
