"""`make demo`'s main job, as a user runs it: real Airflow, a real runner, the ensemble DAG."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from samullm.airflow_env import free_port
from tests.airflow.stack import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_demo_runs_the_ensemble_and_ends_with_its_json_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "samullm.demo", "--home", str(tmp_path / "demo"), "--port", str(free_port()),
         "--runner-port", str(free_port()), "--max-tokens", "4", "--timeout", "600"],
        cwd=REPO, capture_output=True, text=True, timeout=840,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(lines[-1])
    assert summary["dag_run_state"] == "success"
    assert summary["nodes"] == 3 and summary["rows"] == 3 * 24
    assert summary["stages_planned"] >= 1 and summary["stages_actual"] >= 1 and summary["seconds"] > 0
    assert "user admin, password admin" in proc.stdout
    assert "judge.jsonl" in proc.stdout
