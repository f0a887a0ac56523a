"""The runner's HTTP API (FastAPI's in-process test client; no engines start here): the secret
guards every route but /health, errors come back as clear JSON, registration plans, the dry run
answers a schedule. The same routes over a real uvicorn with real engines are in
tests/test_runner_engines.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from samullm.client import RunnerAuthError, RunnerClient, RunnerUnavailable
from samullm.errors import UserInputError
from samullm.results import read_column, read_manifest
from samullm.runner import Runner
from samullm.runtime.config import make_config
from samullm.service import SECRET_ENV, create_app, load_secret

SECRET = "s3cret-for-tests"


@pytest.fixture()
def http(tmp_path):
    from fastapi.testclient import TestClient

    runner = Runner(make_config("cpu", home=str(tmp_path / "home")))
    # The loop is not started: registered nodes are never submitted here, nothing would run.
    runner.start(loop=False)
    with TestClient(create_app(runner, SECRET, start_runner=False)) as client:
        yield client
    runner.shutdown()


AUTH = {"Authorization": f"Bearer {SECRET}"}


def app_body(model, app_run_id="dag.run_1"):
    return {
        "app_run_id": app_run_id,
        "application": {
            "name": "svc",
            "dataset": {"rows": [{"q": "a"}, {"q": "b"}]},
            "nodes": [{"name": "n", "model": str(model), "prompt": "{{ q }}", "engine": {"max_model_len": 256},
                       "sampling": {"max_tokens": 8}}],
        },
        "labels": {"dag_id": "dag"},
    }


def test_health_needs_no_secret_and_everything_else_does(http, tiny_s):
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    for method, path in [("get", "/v1/apps"), ("post", "/v1/apps"), ("get", "/v1/apps/x"),
                         ("post", "/v1/apps/x/nodes/n/submit"), ("get", "/v1/apps/x/nodes/n"),
                         ("post", "/v1/apps/x/cancel"), ("post", "/v1/plan")]:
        missing = getattr(http, method)(path)
        assert missing.status_code == 401 and "missing runner secret" in missing.json()["detail"]
        wrong = getattr(http, method)(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong runner secret"


def test_register_view_status_and_errors(http, tiny_s):
    created = http.post("/v1/apps", json=app_body(tiny_s), headers=AUTH)
    assert created.status_code == 200 and created.json()["state"] == "running"
    view = http.get("/v1/apps/dag.run_1", headers=AUTH).json()
    assert view["plans"][0]["version"] == 1 and view["nodes"][0]["state"] == "pending"
    assert http.get("/v1/apps/dag.run_1/nodes/n", headers=AUTH).json()["rows_total"] == 2
    assert [a["app_run_id"] for a in http.get("/v1/apps", headers=AUTH).json()] == ["dag.run_1"]
    assert http.get("/v1/apps/nope", headers=AUTH).status_code == 404
    assert http.get("/v1/apps/dag.run_1/nodes/zz", headers=AUTH).status_code == 404
    bad = app_body(tiny_s, "dag.run_2")
    bad["application"]["nodes"][0]["prompt"] = "{{ nothing }}"
    refused = http.post("/v1/apps", json=bad, headers=AUTH)
    assert refused.status_code == 400 and "nothing" in refused.json()["detail"]
    invalid_id = http.post("/v1/apps", json=app_body(tiny_s, "has/slash"), headers=AUTH)
    assert invalid_id.status_code == 422


def test_dry_run_plans_without_running(http, tiny_s):
    body = {"application": app_body(tiny_s)["application"]}
    schedule = http.post("/v1/plan", json=body, headers=AUTH).json()
    assert schedule["stages"][0]["nodes"][0]["node"] == "n" and schedule["makespan"] > 0
    assert http.get("/health").json()["devices_busy"] == []


def test_secret_comes_from_file_env_or_a_generated_home_file(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(UserInputError, match="no runner secret"):
        load_secret(home=tmp_path)
    made = load_secret(home=tmp_path, create=True)
    assert len(made) > 20 and load_secret(home=tmp_path) == made
    assert (tmp_path / "runner.secret").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert load_secret(home=tmp_path) == "from-env"
    (tmp_path / "given").write_text("from-file\n")
    assert load_secret(tmp_path / "given", home=tmp_path) == "from-file"


# --- a real `samullm runner` process with real engines ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broken_model(tiny_s, tmp_path):
    """A model directory with a config and tokenizer but no weights: the engine cannot start."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in tiny_s.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, broken / f.name)
    return broken


@pytest.mark.integration
def test_runner_process_serves_runs_and_reports_an_engine_that_cannot_start(tmp_path, tiny_s):
    port = _free_port()
    home = tmp_path / "home"
    (tmp_path / "secret").write_text("process-secret\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "samullm", "runner", "--port", str(port), "--home", str(home),
         "--secret-file", str(tmp_path / "secret"), "--log-level", "warning"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        client = RunnerClient(url, "process-secret")
        deadline = time.monotonic() + 120
        while True:
            try:
                client.health()
                break
            except RunnerUnavailable:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.3)
        with pytest.raises(RunnerAuthError):
            RunnerClient(url, None).apps()
        app = {
            "name": "svc",
            # 24 rows: "long" (one row at a time, 100 tokens each) must still run when the runner stops
            "dataset": {"rows": [{"q": f"q{i}"} for i in range(24)]},
            "nodes": [
                {"name": "good", "model": str(tiny_s), "prompt": "{{ q }} {{ suffix }}",
                 "sampling": {"max_tokens": 5, "ignore_eos": True}, "engine": {"max_model_len": 128}},
                {"name": "broken", "model": str(_broken_model(tiny_s, tmp_path)), "prompt": "{{ q }}",
                 "sampling": {"max_tokens": 5}, "engine": {"max_model_len": 128}},
                {"name": "long", "model": str(tiny_s), "prompt": "{{ q }} {{ good }}",
                 "sampling": {"max_tokens": 100, "ignore_eos": True}, "engine": {"max_model_len": 128, "max_num_seqs": 1}},
            ],
        }
        client.register("dag.svc1", app, context={"suffix": "!"})
        client.submit("dag.svc1", "good", context={"suffix": "?"})
        client.submit("dag.svc1", "broken")
        good = client.wait_node("dag.svc1", "good", timeout=600)
        broken = client.wait_node("dag.svc1", "broken", timeout=600)
        assert good.state == "success" and good.rows_done == 24, good.error
        manifest = read_manifest(good.manifest_uri)
        assert manifest.rows == 24 and len(read_column(manifest.uri)) == 24
        assert read_column(manifest.uri)[0]["prompt_tokens"] > 0
        assert broken.state == "failed" and "engine failed to start" in broken.error
        # Workers exit once their node is done and no plan hands their engine to another node
        # ("long" has other engine options): at once, or after the re-plan that follows.
        deadline = time.monotonic() + 60
        while psutil.Process(proc.pid).children(recursive=True) or client.health().devices_busy:
            assert time.monotonic() < deadline, psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.2)

        client.submit("dag.svc1", "long")
        deadline = time.monotonic() + 600
        while client.status("dag.svc1", "long").rows_done < 1:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: the runner stops every worker first
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    from samullm.store import Store

    store = Store(f"sqlite:///{home / 'store.db'}")
    try:
        (run,) = store.node_runs("dag.svc1", "long")
        assert run.state == "stopped" and run.ended_at is not None
        assert store.get_node("dag.svc1", "long").state == "waiting"  # continues when a runner starts again
        assert store.get_app_run("dag.svc1").state == "running"
    finally:
        store.close()
