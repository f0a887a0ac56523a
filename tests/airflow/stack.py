"""A real SamuLLM runner and a real Airflow 3 (four components) for the end-to-end tests.

The DAGs folder is made for the test: the repository's example DAGs and their data, plus the
test DAGs in tests/airflow/dags/. Tiny models are made before Airflow starts, so task processes
never race to make them.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from samullm.airflow_env import AirflowStack, RunnerProcess, free_port
from samullm.airflow_rest import AirflowRest
from samullm.tinymodel import cached_preset

REPO = Path(__file__).resolve().parents[2]
TEST_DAGS = Path(__file__).resolve().parent / "dags"
SECRET = "e2e-runner-secret"


def make_dags_folder(target: Path, example_dags: list[str], test_dags: list[str]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "dags" / "data", target / "data", dirs_exist_ok=True)
    for name in example_dags:
        shutil.copy(REPO / "dags" / name, target / name)
    for name in test_dags:
        shutil.copy(TEST_DAGS / name, target / name)
    return target


@dataclass
class Stack:
    runner: RunnerProcess
    airflow: AirflowStack
    rest: AirflowRest
    started_in: float

    def stop(self) -> None:
        self.airflow.stop()
        self.runner.stop()

    def diagnostics(self) -> str:
        parts = [f"--- {name} ---\n{proc.log_tail(40)}" for name, proc in self.airflow.processes.items()]
        if self.runner.process is not None:
            parts.append(f"--- runner ---\n{self.runner.process.log_tail(60)}")
        return "\n".join(parts)


def start_stack(base: Path, dags_folder: Path, db_url: str | None = None, store_url: str | None = None,
                extra_env: dict[str, str] | None = None) -> Stack:
    t0 = time.monotonic()
    for name in ("tiny-s", "tiny-m"):
        cached_preset(name)
    runner = RunnerProcess(home=base / "runner", port=free_port(), secret=SECRET, store_url=store_url)
    airflow = AirflowStack(home=base / "airflow", dags_folder=dags_folder, api_port=free_port(), db_url=db_url,
                           runner_url=runner.url, runner_secret=SECRET, extra_env=extra_env or {})
    stack = Stack(runner, airflow, AirflowRest(airflow.base_url), 0.0)
    try:
        runner.start()
        airflow.prepare()
        airflow.start()
        runner.wait_ready()
        airflow.wait_ready()
    except BaseException:
        print(stack.diagnostics())
        stack.stop()
        raise
    stack.started_in = time.monotonic() - t0
    return stack
