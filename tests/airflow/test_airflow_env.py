"""Process handling for the local Airflow stack (no Airflow needed)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from samullm.airflow_env import AirflowStack, ManagedProcess, free_port, port_in_use


def test_stopping_a_process_stops_its_children(tmp_path: Path):
    # A parent that forks a child, like `airflow scheduler` and its executor workers.
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    proc = ManagedProcess("parent", [sys.executable, "-c", script], dict(os.environ), tmp_path / "p.log")
    proc.start()
    time.sleep(0.5)
    pgid = proc.pid
    assert proc.alive()
    proc.stop(timeout=10)
    assert not proc.alive()
    try:
        os.killpg(pgid, 0)
        group_alive = True
    except ProcessLookupError:
        group_alive = False
    assert not group_alive


def test_free_port_is_free_and_port_in_use_sees_a_listener():
    port = free_port()
    assert not port_in_use(port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert port_in_use(port)


def test_stack_environment(tmp_path: Path):
    stack = AirflowStack(home=tmp_path / "home", dags_folder=tmp_path / "dags", api_port=8790,
                         runner_url="http://127.0.0.1:8795", runner_secret="s")
    env = stack.environ()
    assert env["AIRFLOW__API__BASE_URL"] == "http://localhost:8790"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "dags")
    assert env["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "1"
    # Log servers off their default ports (8793/8794), the same on every call (one set per home).
    ports = {env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"], env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]}
    assert not ports & {"8793", "8794"} and len(ports) == 2
    assert stack.environ()["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert '"password": "s"' in env["AIRFLOW_CONN_SAMULLM_DEFAULT"]
