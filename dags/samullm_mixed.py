"""A mixed application over two datasets: an ensemble with a judge over questions, and a chain
summary over documents, in one DAG run, so SamuLLM plans both workloads together on one node.
Plain Python tasks around the LLM tasks read their manifests from XCom.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from samullm_operators import SamuLLMNodeOperator, model_param


with DAG(
    dag_id="samullm_mixed",
    description="Ensemble + judge and a chain summary in one run",
    schedule=None,
    catchup=False,
    tags=["samullm", "example"],
    default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=5)},
    params={
        "model_a": Param("tiny:tiny-s", type="string"),
        "model_b": Param("tiny:tiny-m", type="string"),
        "judge_model": Param("tiny:tiny-s", type="string"),
        "summary_model": Param("tiny:tiny-m", type="string"),
        "max_tokens": Param(16, type="integer", minimum=1),
    },
) as dag:
    sampling = {"max_tokens": "{{ params.max_tokens }}", "ignore_eos": True}
    answer_a = SamuLLMNodeOperator(task_id="answer_a", model=model_param("model_a"), dataset="data/questions.jsonl",
                                   prompt="### Human: {{ question }}\n### Assistant:", sampling=sampling)
    answer_b = SamuLLMNodeOperator(task_id="answer_b", model=model_param("model_b"), dataset="data/questions.jsonl",
                                   prompt="### Human: {{ question }}\n### Assistant:", sampling=sampling)
    judge = SamuLLMNodeOperator(
        task_id="judge", model=model_param("judge_model"), sampling=sampling,
        prompt="Question: {{ question }}\n1: {{ answer_a }}\n2: {{ answer_b }}\nWhich is better?",
    )
    summarize_0 = SamuLLMNodeOperator(task_id="summarize_0", model=model_param("summary_model"), dataset="data/documents.jsonl",
                                      prompt="Next part: {{ chunks[0] }}\nWrite a summary.", sampling=sampling)
    summarize_1 = SamuLLMNodeOperator(
        task_id="summarize_1", model=model_param("summary_model"), where="chunks|length > 1", sampling=sampling,
        prompt="Summary so far: {{ summarize_0 }}\nNext part: {{ chunks[1] }}\nWrite an updated summary.",
    )

    @task
    def report(judged: dict, summarised: dict) -> dict:
        """A plain Python task downstream: the manifests tell where the columns are."""
        return {"judge": judged["result_uri"], "summaries": summarised["result_uri"],
                "rows": judged["rows"] + summarised["rows"]}

    [answer_a, answer_b] >> judge
    summarize_0 >> summarize_1
    report(judge.output, summarize_1.output)
