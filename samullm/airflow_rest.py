"""A small client of Airflow 3's REST API (v2) for the demo and the end-to-end tests.

Only the calls they need: a token from the simple auth manager, DAG visibility and unpausing,
triggering a run, polling it, task instances, clearing a task, XCom values, task logs, and GET on
any path (the SamuLLM plugin's routes). Standard library only, so `samullm` needs no HTTP package.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def quote(part: str) -> str:
    """One URL path segment (run ids hold ':' and '+')."""
    return urllib.parse.quote(part, safe="")


class AirflowRest:
    def __init__(self, base_url: str, username: str = "admin", password: str = "admin") -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self._token: str | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, auth: bool = True,
                accept: str = "application/json", timeout: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": accept}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise AirflowApiError(method, path, err.code, err.read().decode(errors="replace")) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def token(self) -> str:
        if self._token is None:
            answer = self.request("POST", "/auth/token",
                                  {"username": self.username, "password": self.password}, auth=False)
            self._token = answer["access_token"]
        return self._token

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    # -- DAGs and runs ----------------------------------------------------------------------

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """Wait until the dag-processor has parsed `dag_id`; report its import error if any."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get(f"/api/v2/dags/{quote(dag_id)}")
            except AirflowApiError as err:
                if err.status != 404:
                    raise
            if time.monotonic() > deadline:
                errors = self.get("/api/v2/importErrors").get("import_errors", [])
                detail = "; ".join(f"{e['filename']}: {e['stack_trace'][-400:]}" for e in errors)
                raise TimeoutError(f"DAG {dag_id!r} not parsed after {timeout:.0f} s. Import errors: {detail or 'none'}")
            time.sleep(1.0)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{quote(dag_id)}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> dict:
        return self.request("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns",
                            {"logical_date": None, "conf": conf or {}})

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 1.0,
                     on_poll=None) -> dict:
        """Poll a DAG run until it succeeds or fails; `on_poll(run)` is called each time."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if on_poll is not None:
                on_poll(run)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG run {dag_id}/{run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances"
        return self.get(path)["task_instances"]

    def clear_task(self, dag_id: str, run_id: str, task_id: str) -> dict:
        return self.request("POST", f"/api/v2/dags/{quote(dag_id)}/clearTaskInstances", {
            "dry_run": False, "dag_run_id": run_id, "task_ids": [task_id], "only_failed": False,
        })

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = (f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/"
                f"{quote(task_id)}/xcomEntries/{quote(key)}")
        return self.get(path)["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task attempt's log (trigger lines included) as plain text."""
        path = (f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/"
                f"{quote(task_id)}/logs/{try_number}?full_content=true")
        answer = self.get(path)
        lines = []
        for item in answer.get("content", []) if isinstance(answer, dict) else []:
            if isinstance(item, dict):
                lines.append(" ".join(str(v) for k, v in item.items() if k in ("timestamp", "level", "event", "error_detail") and v))
            else:
                lines.append(str(item))
        return "\n".join(lines)
