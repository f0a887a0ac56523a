"""The operator's pure parts: progress lines, manifest, runner address, error sorting, trigger."""

from __future__ import annotations

import datetime as dt
import importlib
from types import SimpleNamespace

import pytest

pytest.importorskip("airflow.sdk")

from samullm.api import NodePlan, NodeStatus
from samullm.client import RunnerAuthError, RunnerError, RunnerUnavailable
from samullm.errors import UserInputError
from samullm_operators.hooks import endpoint_from_connection
from samullm_operators.progress import manifest, progress_line
from samullm_operators.runner_calls import (RunnerBadInput, RunnerNotFound, RunnerUnreachable, call_runner)
from samullm_operators.triggers import SamuLLMNodeTrigger

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def status(**kw) -> NodeStatus:
    base = dict(app_run_id="d.r", node="answer_a", model="/m/tiny-s", state="running", rows_total=40,
                rows_done=10, output_tokens=160, prompt_tokens=400, plan=NodePlan(tp=1, devices=[0]))
    return NodeStatus(**{**base, **kw})


def test_progress_line_says_state_rows_tokens_and_plan():
    assert progress_line(status()) == (
        "SamuLLM node answer_a [/m/tiny-s]: running, 10/40 rows (25%), 160 output tokens, TP1 on devices 0")
    line = progress_line(status(state="failed", rows_failed=2, attempts=2, error="engine died",
                                plan=NodePlan(tp=2, dp=2, devices=[0, 1, 2, 3])))
    assert line.endswith("TP2 x DP2 on devices 0,1,2,3, 2 rows failed, attempt 2, error: engine died")
    assert "no plan yet" in progress_line(status(plan=None, state="waiting"))


def test_manifest_is_small_and_json_ready():
    done = status(state="success", rows_done=40, result_uri="/r/d.r/answer_a.jsonl",
                  manifest_uri="/r/d.r/answer_a.manifest.json", started_at=T0,
                  finished_at=T0 + dt.timedelta(seconds=9), seconds_running=8.25, load_seconds=3.5)
    m = manifest(done)
    assert m["rows"] == 40 and m["output_tokens"] == 160 and m["result_uri"].endswith("answer_a.jsonl")
    assert m["plan"] == {"tp": 1, "dp": 1, "devices": [0]}
    assert m["started_at"] == "2026-01-01T12:00:00+00:00" and m["seconds_running"] == 8.25


def conn(**kw):
    return SimpleNamespace(**{"conn_id": "samullm_default", "host": None, "port": None, "schema": None,
                              "password": None, **kw})


def test_runner_address_from_a_connection():
    ep = endpoint_from_connection(conn(host="http://127.0.0.1:8795/", password="s3"))
    assert (ep.url, ep.secret) == ("http://127.0.0.1:8795", "s3")
    ep = endpoint_from_connection(conn(host="runner", port=9000, schema="https"))
    assert (ep.url, ep.secret) == ("https://runner:9000", None)
    assert endpoint_from_connection(conn(host="http://runner", port=9000)).url == "http://runner:9000"
    with pytest.raises(ValueError, match="no host"):
        endpoint_from_connection(conn())


@pytest.mark.parametrize("raised, sorted_as", [
    (RunnerUnavailable("no SamuLLM runner answers"), RunnerUnreachable),
    (RunnerAuthError("wrong runner secret"), RunnerBadInput),
    (UserInputError("unknown model 'x'"), RunnerBadInput),
    (KeyError("unknown run"), RunnerNotFound),
    (RunnerError("answered 500"), RunnerUnreachable),
])
def test_runner_failures_are_sorted_by_what_a_retry_can_do(raised, sorted_as):
    endpoint = SimpleNamespace(url="http://127.0.0.1:1", source="test")

    def call():
        raise raised

    with pytest.raises(sorted_as) as info:
        call_runner(endpoint, call)
    assert str(raised.args[0]) in str(info.value)


def test_trigger_serializes_to_an_importable_class():
    trigger = SamuLLMNodeTrigger("d.r", "judge", "my_conn", poll_interval=1.5)
    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    assert module == "samullm_operators.triggers"  # the installed package, which the triggerer imports
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (path, kwargs)


def test_provider_metadata_is_valid_and_airflow_finds_the_connection_type():
    import json

    import jsonschema
    from airflow import providers_manager

    from samullm_operators.provider import get_provider_info

    schema_path = __import__("pathlib").Path(providers_manager.__file__).parent / "provider_info.schema.json"
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert "samullm" in providers_manager.ProvidersManager().providers
    assert ProvidersManagerTaskRuntime().hooks["samullm"].hook_class_name == "samullm_operators.hooks.SamuLLMHook"
