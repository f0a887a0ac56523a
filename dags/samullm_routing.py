"""Routing: a small router model reads each request and names the expert that should answer it;
each expert runs only over the rows routed to it.

Until the router has run, SamuLLM plans with each expert's `share` of the rows, then re-plans
with the real split. With the default tiny random-weight models the router's words are
gibberish, so most rows match no expert (an expert may get no row at all and finishes at
once); with real models (params or Variables `samullm_<param>`) the split is meaningful.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from samullm_operators import SamuLLMNodeOperator, model_param


with DAG(
    dag_id="samullm_routing",
    description="A router model sends each request to one of two experts",
    schedule=None,
    catchup=False,
    tags=["samullm", "example"],
    default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=5)},
    params={
        "router_model": Param("tiny:tiny-s", type="string"),
        "math_model": Param("tiny:tiny-m", type="string"),
        "chat_model": Param("tiny:tiny-s", type="string"),
        "max_tokens": Param(16, type="integer", minimum=1),
    },
) as dag:
    router = SamuLLMNodeOperator(
        task_id="router",
        model=model_param("router_model"),
        dataset="data/questions.jsonl",
        prompt="Request: {{ question }}\nIs this a science question or everyday chat? Reply with one word: science or chat.",
        sampling={"max_tokens": 2, "temperature": 0.0},
    )
    science = SamuLLMNodeOperator(
        task_id="science_expert",
        model=model_param("math_model"),
        prompt="### Human: {{ question }}\n### Assistant:",
        route={"router": "router", "equals": "science", "share": 0.5},
        sampling={"max_tokens": "{{ params.max_tokens }}", "ignore_eos": True},
    )
    chat = SamuLLMNodeOperator(
        task_id="chat_expert",
        model=model_param("chat_model"),
        prompt="### Human: {{ question }}\n### Assistant:",
        route={"router": "router", "equals": "chat", "share": 0.5},
        sampling={"max_tokens": "{{ params.max_tokens }}", "ignore_eos": True},
    )
    router >> [science, chat]
