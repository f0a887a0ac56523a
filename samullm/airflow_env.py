"""Start and stop a local Airflow 3 (api-server, scheduler, dag-processor, triggerer) and a SamuLLM
runner as separate processes, for the demo and the end-to-end tests.

Nothing here imports Airflow: the components are the `airflow` command line run as subprocesses
of this interpreter (`python -m airflow ...`). Each process gets its own session (process group)
and log file, so stopping it takes its children too (`airflow scheduler` forks executor workers
and a log server). Facts this relies on, found by running Airflow 3.3.2 here:

- the scheduler's and the triggerer's log servers bind ports 8793 and 8794 on every address, so
  each stack picks free ports for them and for the api-server;
- `[workers] min_heartbeat_interval=1` narrows a race in which a task that defers and is woken
  within seconds is marked failed (the executor reports the deferral exit late);
- `[core] parallelism` defaults to 32 LocalExecutor workers: a small machine wants 4;
- a pre-written simple-auth-manager passwords file fixes the UI password;
- the JWT and api secrets must be the same in every component: set them once per home.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from samullm.errors import UserInputError

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
RUNNER_CONN_ID = "samullm_default"


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ManagedProcess:
    """One long-lived command in its own process group, writing to its own log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after `timeout` seconds."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                self.proc.poll()
                time.sleep(0.2)
            if not _group_alive(pgid):
                break
        self.proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True  # (an unreaped leader counts too: callers poll() it)


def http_json(url: str, timeout: float = 5.0) -> tuple[int, object]:
    """GET a URL: (status, parsed JSON or text); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        body, status = err.read(), err.code
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


@dataclass
class RunnerProcess:
    """`samullm runner` on loopback with a shared secret and its own store and home."""

    home: Path
    port: int
    secret: str
    store_url: str | None = None
    results: str | None = None
    devices: str = "cpu"
    host: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def secret_file(self) -> Path:
        return self.home / "runner.secret"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.secret_file.write_text(self.secret + "\n")
        self.secret_file.chmod(0o600)
        env = {**os.environ, "SAMULLM_HOME": str(self.home), **self.extra_env}
        env.pop("SAMULLM_RUNNER_SECRET", None)  # the file is the one source of the secret
        argv = [sys.executable, "-m", "samullm", "runner", "--host", self.host, "--port", str(self.port),
                "--secret-file", str(self.secret_file), "--devices", self.devices, "--home", str(self.home)]
        if self.store_url:
            argv += ["--store", self.store_url]
        if self.results:
            argv += ["--results", self.results]
        self.process = ManagedProcess("runner", argv, env, self.home / "logs" / "runner.log")
        self.process.start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = http_json(f"{self.url}/health", timeout=2.0)
            if status == 200:
                return
            if self.process is not None and not self.process.alive():
                raise RuntimeError(f"samullm runner exited early; log tail:\n{self.process.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"samullm runner not healthy at {self.url} after {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30.0)


@dataclass
class AirflowStack:
    """A local Airflow home and its four components.

    `runner_url`/`runner_secret` become the `samullm_default` connection (an environment
    connection, so nothing is written to the metadata database)."""

    home: Path
    dags_folder: Path
    api_port: int = 8790
    db_url: str | None = None  # default: SQLite under home
    runner_url: str | None = None
    runner_secret: str | None = None
    username: str = "admin"
    password: str = "admin"
    parallelism: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.api_port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "component-logs"

    def _stack_secrets(self) -> dict[str, str]:
        """Per-home secrets, made once: every component must share them."""
        path = self.home / "stack-secrets.json"
        if path.is_file():
            return json.loads(path.read_text())
        worker_port = free_port()
        trigger_port = next(p for p in iter(free_port, None) if p != worker_port)
        values = {"jwt_secret": secrets.token_urlsafe(32), "api_secret_key": secrets.token_urlsafe(32),
                  "worker_log_port": worker_port, "trigger_log_port": trigger_port}
        self.home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        return values

    def environ(self) -> dict[str, str]:
        """The environment every component (and the `airflow` CLI) runs with."""
        sec = self._stack_secrets()
        db_url = self.db_url or f"sqlite:///{self.home / 'airflow.db'}"
        venv_bin = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__SECRET_KEY": sec["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(sec["worker_log_port"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(sec["trigger_log_port"]),
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if self.runner_url:
            conn = {"conn_type": "samullm", "host": self.runner_url, "password": self.runner_secret or ""}
            env[f"AIRFLOW_CONN_{RUNNER_CONN_ID.upper()}"] = json.dumps(conn)
        return env

    def airflow(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """Run one `airflow` CLI command in this stack's environment; raise with its output on failure."""
        result = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.environ(),
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def prepare(self) -> None:
        """Make the home, fix the UI password, create or upgrade the metadata database."""
        if port_in_use(self.api_port):
            raise UserInputError(f"port {self.api_port} is already in use: pick another one for the Airflow api-server")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "plugins").mkdir(exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({self.username: self.password}))
        self.airflow("db", "migrate")

    def start(self) -> None:
        env = self.environ()
        for component in AIRFLOW_COMPONENTS:
            proc = ManagedProcess(component, [sys.executable, "-m", "airflow", component], env,
                                  self.log_dir / f"{component}.log", cwd=self.home)
            proc.start()
            self.processes[component] = proc

    def health(self) -> dict:
        status, body = http_json(f"{self.base_url}/api/v2/monitor/health", timeout=3.0)
        return body if status == 200 and isinstance(body, dict) else {}

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until the api-server answers and every component reports healthy; return seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for name, proc in self.processes.items():
                if not proc.alive():
                    raise RuntimeError(f"airflow {name} exited early; log tail:\n{proc.log_tail()}")
            health = self.health()
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            if health and all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                return time.monotonic() - t0
            time.sleep(1.0)
        raise TimeoutError(f"Airflow not healthy after {timeout:.0f} s: {self.health()}")

    def stop(self) -> None:
        # The triggerer may take ~20 s (it waits for its trigger subprocess): stop all at once.
        for proc in self.processes.values():
            if proc.proc is not None:
                try:
                    os.killpg(proc.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.processes.values():
            proc.stop(timeout=30.0)
        self.processes.clear()
