"""`SamuLLMNodeOperator`: one LLM node of a SamuLLM application, as an Airflow task.

    from samullm_operators import SamuLLMNodeOperator

    answer = SamuLLMNodeOperator(
        task_id="answer_a",
        model="{{ params.model_a }}",                  # Airflow-templated
        dataset="data/questions.jsonl",                # relative to the DAG file's folder
        prompt="Q: {{ question }}\\nA:",                # rendered per row by SamuLLM, not by Airflow
        sampling={"max_tokens": "{{ params.max_tokens }}", "temperature": 0.7},
    )
    judge = SamuLLMNodeOperator(task_id="judge", model="...", prompt="{{ question }} 1: {{ answer_a }} ...")
    answer >> judge

The prompt rule. `prompt` is a Jinja template that SamuLLM renders once per row; it is *not* an
Airflow templated field (Airflow would render its `{{ question }}` once, at task start, and fail).
It reads the row's columns, the outputs of upstream SamuLLM tasks under their node names, and
from Airflow: `params`, `dag_id`, `run_id`, and the keys of `prompt_context` (a templated dict
Airflow renders first: `prompt_context={"lang": "{{ var.value.lang }}"}`). Every other field is
templated as usual (values come back as strings unless the DAG renders native objects; the
operator converts them).

On execute the task registers the whole DAG run's application with the runner (the first SamuLLM
task of a run does it; later calls change nothing), submits its node and defers to
`SamuLLMNodeTrigger`, which waits for the node without holding a worker slot and logs its
progress. The task returns a small manifest (result location, rows, tokens, plan, timings) to
XCom. A retry or a clear runs the node again only for rows without a result; a node that already
succeeded returns its manifest at once.

Fields:
- model: a model directory or a Hugging Face name the runner can load, or `tiny:PRESET`
  (`tiny:tiny-s`: a random-weight model made on first use on this machine, for trying things
  on CPU; the runner must see the same filesystem).
- dataset: a file path (.jsonl/.json/.csv/.parquet, relative to the DAG file's folder, or
  `shared:...`), a list of row dicts, or a dataset dict (rows/path/trace/synthetic). Omit it to
  read the dataset of the upstream SamuLLM tasks.
- where (row filter over columns), route ({"router": task, "equals": "...", "share": 0.3}),
  sampling (max_tokens, temperature, top_p, stop, seed, ignore_eos), engine (max_model_len,
  dtype, max_num_seqs, ...), plan (pinned: {"tp": 2, "dp": 1, "devices": [0, 1]}),
  output_lengths (model whose length distribution to assume): as in `samullm.graph.LLMNode`.
- results: where the run's columns go, a local path or any `ObjectStoragePath`/fsspec URL the
  runner can write (default: the runner's). All SamuLLM tasks of a DAG must agree.
- node_name: the name prompts read this task's output under (default: the task id with characters
  outside [A-Za-z0-9_] replaced by `_`).
- samullm_conn_id: the Airflow connection of the runner (see `SamuLLMHook`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from samullm.api import NodeStatus, app_run_id_for
from samullm.errors import UserInputError
from samullm_operators.dag_graph import build_dag_application, node_name_for
from samullm_operators.hooks import DEFAULT_CONN_ID, SamuLLMHook
from samullm_operators.progress import manifest, plan_text, progress_line
from samullm_operators.runner_calls import RunnerBadInput, RunnerUnreachable, call_runner
from samullm_operators.triggers import SamuLLMNodeTrigger

STATE_KEY = "samullm"  # the task_state_store key this task writes


class SamuLLMNodeOperator(BaseOperator):
    template_fields: Sequence[str] = (
        "model", "dataset", "where", "route", "sampling", "engine", "plan", "output_lengths",
        "results", "prompt_context",
    )
    template_fields_renderers = {"sampling": "json", "engine": "json", "plan": "json", "route": "json",
                                 "prompt_context": "json", "dataset": "json"}
    ui_color = "#d9e8fb"

    def __init__(
        self,
        *,
        model: str,
        prompt: str,
        dataset: Any = None,
        where: str | None = None,
        route: dict[str, Any] | None = None,
        sampling: dict[str, Any] | None = None,
        engine: dict[str, Any] | None = None,
        plan: dict[str, Any] | None = None,
        output_lengths: str | None = None,
        results: Any = None,
        prompt_context: dict[str, Any] | None = None,
        node_name: str | None = None,
        samullm_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 2.0,
        node_timeout: dt.timedelta | None = dt.timedelta(hours=24),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.prompt = prompt
        self.dataset = dataset
        self.where = where
        self.route = route
        self.sampling = sampling or {}
        self.engine = engine or {}
        self.plan = plan
        self.output_lengths = output_lengths
        self.results = results
        self.prompt_context = prompt_context or {}
        self.node_name = node_name or node_name_for(self.task_id)
        self.samullm_conn_id = samullm_conn_id
        self.poll_interval = poll_interval
        self.node_timeout = node_timeout

    # -- execute: register, submit, defer ------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any] | None:
        dag = context["dag"]
        app_run_id = app_run_id_for(dag.dag_id, context["run_id"])
        try:
            built = build_dag_application(dag, context, self, SamuLLMNodeOperator)
        except UserInputError as err:
            raise AirflowFailException(f"SamuLLM: {err}") from None
        hook = SamuLLMHook(self.samullm_conn_id)
        endpoint = hook.endpoint()
        client = endpoint.client()
        app = self._call(
            endpoint, client.register, app_run_id, built.application.model_dump(mode="json", exclude_defaults=True),
            results_uri=built.results_uri,
            labels={"dag_id": dag.dag_id, "run_id": context["run_id"],
                    "nodes_of_tasks": json.dumps(built.node_of_task)},
            context=built.context,
        )
        self.log.info("SamuLLM run %s registered with the runner at %s (%s)", app_run_id, endpoint.url, app.state)
        status = self._call(endpoint, client.status, app_run_id, self.node_name)
        if status.state == "success":
            # A clear or retry of a finished node: nothing to recompute, and no deferral (whose
            # immediate wake-up would race the scheduler for nothing).
            self.log.info("SamuLLM node %s already finished (%d rows): returning its manifest, nothing recomputed",
                          self.node_name, status.rows_done)
            return self._finish(context, status)
        status = self._call(endpoint, client.submit, app_run_id, self.node_name,
                            built.node_context.get(self.node_name, {}))
        self.log.info("%s", progress_line(status))
        self._publish(context, {"app_run_id": app_run_id, "node": self.node_name, "state": status.state,
                                "runner": endpoint.url, "plan": plan_text(status),
                                "try_number": context["ti"].try_number})
        if status.state == "success":
            return self._finish(context, status)
        if status.terminal:
            raise AirflowException(f"SamuLLM node {self.node_name} {status.state}: {status.error or 'no reason given'}")
        self.defer(
            trigger=SamuLLMNodeTrigger(app_run_id, self.node_name, self.samullm_conn_id, self.poll_interval),
            method_name="execute_complete",
            timeout=self.node_timeout,
        )
        return None

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Back from the trigger: the node is terminal (or the runner vanished)."""
        if event.get("status") == "success":
            return self._finish(context, NodeStatus.model_validate(event["node_status"]))
        if "node_status" in event:
            status = NodeStatus.model_validate(event["node_status"])
            self.log.error("%s", progress_line(status))
            for reason, count in status.row_errors:
                self.log.error("%d rows failed: %s", count, reason)
            self._publish(context, {"node": self.node_name, "state": status.state, "error": status.error})
            raise AirflowException(f"SamuLLM node {self.node_name} {status.state}: {status.error or 'no reason given'}")
        raise AirflowException(f"SamuLLM node {self.node_name}: {event.get('message', event)}")

    # -- helpers --------------------------------------------------------------------------------

    def _call(self, endpoint: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A runner call whose failure fails the task with the runner's own words.

        Bad input (unknown model, missing column, model too big...) fails without retries: a
        retry would fail the same way. A runner that does not answer may be restarted: retry."""
        try:
            return call_runner(endpoint, fn, *args, **kwargs)
        except RunnerBadInput as err:
            raise AirflowFailException(f"SamuLLM: {err}") from None
        except RunnerUnreachable as err:
            raise AirflowException(f"SamuLLM: {err}") from None

    def _finish(self, context: Any, status: NodeStatus) -> dict[str, Any]:
        result = manifest(status)
        self.log.info("%s", progress_line(status))
        self.log.info("SamuLLM node %s: column at %s", self.node_name, status.result_uri)
        self._publish(context, result)
        return result

    def _publish(self, context: Any, value: dict[str, Any]) -> None:
        """Small JSON state in Airflow's task state store (shown in the UI's Storage tab)."""
        store = context.get("task_state_store")
        if store is None:
            return
        try:
            store.set(STATE_KEY, value)
        except Exception as err:  # the state store is a convenience: never fail the node for it
            self.log.warning("could not write task_state_store: %s", err)
