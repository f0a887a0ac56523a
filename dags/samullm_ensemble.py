"""Ensemble with a judge, LLM-Blender style: several models answer every question, then a judge
reads all their answers to a question and picks the best one.

SamuLLM plans the candidates side by side on the node's devices (or one after another with more
tensor parallelism, whichever its simulation finds faster) and starts the judge when its inputs
exist. By default every model is a tiny random-weight model made on first use, so the DAG runs
on a CPU-only machine (its text is gibberish; its timings are real). On a GPU host set the params
when triggering, or the Airflow Variables `samullm_<param>` (e.g. `samullm_model_a =
lmsys/vicuna-13b-v1.5`), to real model names.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from samullm_operators import SamuLLMNodeOperator, model_param


SAMPLING = {"max_tokens": "{{ params.max_tokens }}", "temperature": 0.8, "ignore_eos": "{{ params.ignore_eos }}"}

with DAG(
    dag_id="samullm_ensemble",
    description="LLM-Blender-style ensemble: candidates answer, a judge picks the best answer",
    schedule=None,
    catchup=False,
    tags=["samullm", "example"],
    default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=5)},
    params={
        "model_a": Param("tiny:tiny-s", type="string", description="first candidate model"),
        "model_b": Param("tiny:tiny-m", type="string", description="second candidate model"),
        "judge_model": Param("tiny:tiny-s", type="string", description="the judge"),
        "dataset": Param("data/questions.jsonl", type="string", description="rows with a `question` column"),
        "max_tokens": Param(16, type="integer", minimum=1),
        "ignore_eos": Param(True, type="boolean", description="generate max_tokens every time (tiny models)"),
    },
) as dag:
    answer_a = SamuLLMNodeOperator(
        task_id="answer_a",
        model=model_param("model_a"),
        dataset="{{ params.dataset }}",
        prompt="### Human: {{ question }}\n### Assistant:",
        sampling=SAMPLING,
    )
    answer_b = SamuLLMNodeOperator(
        task_id="answer_b",
        model=model_param("model_b"),
        dataset="{{ params.dataset }}",
        prompt="### Human: {{ question }}\n### Assistant:",
        sampling=SAMPLING,
    )
    judge = SamuLLMNodeOperator(
        task_id="judge",
        model=model_param("judge_model"),
        prompt=(
            "Question: {{ question }}\n"
            "Answer 1: {{ answer_a }}\n"
            "Answer 2: {{ answer_b }}\n"
            "Which answer is better? Reply with its number and one reason."
        ),
        sampling={"max_tokens": "{{ params.max_tokens }}", "temperature": 0.0, "ignore_eos": "{{ params.ignore_eos }}"},
    )
    [answer_a, answer_b] >> judge
