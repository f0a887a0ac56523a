"""The runner client against a real HTTP server (uvicorn in a thread, no node submitted so no
engine starts): typed answers, and errors that say what to do."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from samullm.client import AsyncRunnerClient, RunnerAuthError, RunnerClient, RunnerUnavailable
from samullm.errors import UserInputError
from samullm.runner import Runner
from samullm.runtime.config import make_config
from samullm.service import create_app

SECRET = "client-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    runner = Runner(make_config("cpu", home=str(tmp_path_factory.mktemp("client") / "home")))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runner, SECRET), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def application(model) -> dict:
    return {
        "name": "client",
        "dataset": {"rows": [{"q": "x"}, {"q": "y"}, {"q": "z"}]},
        "nodes": [{"name": "n", "model": str(model), "prompt": "{{ q }} {{ tag }}", "engine": {"max_model_len": 128},
                   "sampling": {"max_tokens": 4}}],
    }


def test_nothing_listening_says_how_to_start_a_runner():
    port = free_port()
    with pytest.raises(RunnerUnavailable, match=f"samullm runner --port {port}"):
        RunnerClient(f"http://127.0.0.1:{port}", SECRET).health()


def test_wrong_secret_is_reported_as_such(server):
    assert RunnerClient(server, "wrong").health().status == "ok"  # /health is public
    with pytest.raises(RunnerAuthError, match="wrong runner secret"):
        RunnerClient(server, "wrong").apps()
    with pytest.raises(RunnerAuthError, match="missing runner secret"):
        RunnerClient(server, None).apps()


def test_register_status_view_cancel_and_dry_run(server, tiny_s):
    with RunnerClient(server, SECRET) as client:
        status = client.register("dag.c1", application(tiny_s), labels={"dag_id": "dag"}, context={"tag": "t"})
        assert status.state == "running" and status.labels == {"dag_id": "dag"}
        node = client.status("dag.c1", "n")
        assert (node.state, node.rows_total, node.model) == ("pending", 3, str(tiny_s))
        view = client.view("dag.c1")
        assert view.plans[0].schedule.stages[0].nodes[0].node == "n"
        assert "dag.c1" in [a.app_run_id for a in client.apps()]
        schedule = client.dry_run(application(tiny_s) | {"dataset": {"rows": [{"q": "x", "tag": ""}]}})
        assert schedule.makespan > 0
        assert client.cancel("dag.c1").state == "cancelled"
        with pytest.raises(KeyError):
            client.status("dag.c1", "zz")
        with pytest.raises(UserInputError, match="tag"):
            client.register("dag.c2", application(tiny_s))  # `tag` is neither a column nor context
        status = asyncio.run(AsyncRunnerClient(server, SECRET).status("dag.c1", "n"))
        assert status.state == "cancelled" and status.terminal
