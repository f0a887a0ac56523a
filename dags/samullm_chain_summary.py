"""Chain summary: documents cut into chunks; step i reads chunk i of each document and the
summary so far (step i-1's output), for the documents that have a chunk i.

Each step is its own task and node, so Airflow shows and retries them one by one while SamuLLM
keeps the model's engine warm from one step to the next when its plan allows.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from samullm_operators import SamuLLMNodeOperator, model_param

STEPS = 3  # chunks summarised per document (data/documents.jsonl has up to four)


with DAG(
    dag_id="samullm_chain_summary",
    description="Running summary over document chunks, one node per step",
    schedule=None,
    catchup=False,
    tags=["samullm", "example"],
    default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=5)},
    params={
        "summary_model": Param("tiny:tiny-s", type="string"),
        "max_tokens": Param(24, type="integer", minimum=1),
    },
) as dag:
    previous = None
    for step in range(STEPS):
        summary_so_far = f"Summary so far: {{{{ summarize_{step - 1} }}}}\n" if step else ""
        task = SamuLLMNodeOperator(
            task_id=f"summarize_{step}",
            model=model_param("summary_model"),
            dataset="data/documents.jsonl" if step == 0 else None,
            where=f"chunks|length > {step}" if step else None,
            prompt=summary_so_far + f"Next part: {{{{ chunks[{step}] }}}}\nWrite an updated summary.",
            sampling={"max_tokens": "{{ params.max_tokens }}", "ignore_eos": True},
        )
        if previous is not None:
            previous >> task
        previous = task
