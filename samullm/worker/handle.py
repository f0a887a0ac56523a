"""The parent's side of an engine worker: start it, read its events, stop or kill it.

The worker runs in its own session (process group), so that `kill()` and the sweep after
every exit reach the rank processes vLLM starts for TP > 1 even if the worker died first.
Events arrive on a private pipe, read by a daemon thread into a queue; the worker's stdout and
stderr (vLLM's logs) go to a log file. One handle is meant to be driven from one thread (a
runner thread); it never blocks unless asked to wait, and every wait takes a timeout.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

import samullm
from samullm.worker import messages as m

_PACKAGE_ROOT = str(Path(samullm.__file__).resolve().parent.parent)


class WorkerError(RuntimeError):
    """The worker ended without the event that was awaited."""


class WorkerTimeout(WorkerError):
    """The awaited event did not come in time (the worker is left as it is)."""


class EngineWorker:
    """One engine worker process for one job (and, with `job.handoff_dir`, the handoffs it is
    given: `hand_off`).

    workdir holds the job file (job.json) and the worker's log (worker.log).
    env: extra environment variables for the worker (the device binding is the worker's own).
    """

    def __init__(self, job: m.JobSpec, workdir: str | Path, env: dict[str, str] | None = None):
        self.job = job
        self.workdir = Path(workdir)
        self.job_path = self.workdir / "job.json"
        self.log_path = self.workdir / "worker.log"
        self._extra_env = dict(env or {})
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue[m.WorkerEvent] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.history: list[m.WorkerEvent] = []  # every event received, in order
        self.loaded: m.Loaded | None = None
        self.terminal: m.Finished | m.Stopped | m.Error | None = None
        self.handoffs = 0  # handoff files written
        self._waited = 0  # history events wait_for has looked at

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("this worker was already started; make a new EngineWorker")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.job_path.write_text(self.job.model_dump_json())
        read_fd, write_fd = os.pipe()
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p
        )
        env.update(self._extra_env)
        with self.log_path.open("ab") as log:
            try:
                self._process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "samullm.worker",
                        "--job",
                        str(self.job_path),
                        "--events-fd",
                        str(write_fd),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    env=env,
                    start_new_session=True,  # own process group: see kill()
                )
            finally:
                os.close(write_fd)
        self._reader = threading.Thread(
            target=self._read_events, args=(read_fd,), name=f"worker-{self.pid}-events", daemon=True
        )
        self._reader.start()

    def _read_events(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                try:
                    event = m.parse_event(line)
                except ValidationError:
                    continue  # not ours; the worker writes only events here
                self._events.put(event)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- events -----------------------------------------------------------------------------
    def poll_events(self, timeout: float = 0.0) -> list[m.WorkerEvent]:
        """Events received since the last call; waits up to `timeout` s for the first one."""
        got: list[m.WorkerEvent] = []
        try:
            got.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
            while True:
                got.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in got:
            self._note(event)
        return got

    def _note(self, event: m.WorkerEvent) -> None:
        self.history.append(event)
        if isinstance(event, m.Started):
            self.terminal = None  # a handoff's rows start: the last word is still to come
        elif isinstance(event, m.Loaded):
            self.loaded = event
        elif isinstance(event, (m.Finished, m.Stopped, m.Error)):
            self.terminal = event

    def _reader_done(self) -> bool:
        return self._reader is None or not self._reader.is_alive()

    def wait_for(self, *kinds: str, timeout: float) -> m.WorkerEvent:
        """The next event of one of `kinds` after the last one this returned (events are read in
        order: one that arrived together with an earlier match is not skipped; the others are
        still recorded in history).

        Raises WorkerError if the worker ends (or reports an error, unless "error" is one of
        the kinds) without sending one, WorkerTimeout after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            while self._waited < len(self.history):
                event = self.history[self._waited]
                self._waited += 1
                if event.event in kinds:
                    return event
                if isinstance(event, m.Error):
                    raise WorkerError(f"worker {event.stage} error: {event.message}")
            if not self.is_alive() and self._reader_done() and self._events.empty():
                raise WorkerError(
                    f"worker exited with code {self.returncode} before sending {'/'.join(kinds)}"
                    f"; log: {self.log_path}"
                )
            if time.monotonic() >= deadline:
                raise WorkerTimeout(f"no {'/'.join(kinds)} event from worker {self.pid} in {timeout:g} s")
            self.poll_events(timeout=min(0.2, max(0.0, deadline - time.monotonic())))

    def wait(self, timeout: float) -> int:
        """Wait for the worker to exit; its return code. Raises WorkerTimeout."""
        if self._process is None:
            raise RuntimeError("worker not started")
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WorkerTimeout(f"worker {self.pid} still running after {timeout:g} s") from None
        self._sweep_group()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.poll_events()
        return code

    # -- handoffs ---------------------------------------------------------------------------
    def hand_off(self, handoff: m.Handoff) -> Path:
        """Give a waiting worker (a job with `handoff_dir`) its next rows, or `exit`. The file
        appears whole (written aside, then renamed), so the worker never reads half of it."""
        if self.job.handoff_dir is None:
            raise RuntimeError("this worker's job has no handoff_dir: it exits when its rows are done")
        folder = Path(self.job.handoff_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.handoffs += 1
        path = folder / f"{self.handoffs}.json"
        aside = folder / f".{self.handoffs}.json.tmp"
        aside.write_text(handoff.model_dump_json())
        os.replace(aside, path)
        return path

    # -- stopping ---------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> int | None:
        """Ask the worker to stop (SIGTERM: finished rows kept, engine shut down); kill its
        whole process group if it has not exited after `timeout` s. Returns its exit code."""
        if self._process is None:
            return None
        if self.is_alive():
            try:
                self._process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                return self.wait(timeout)
            except WorkerTimeout:
                self.kill()
        return self.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the worker and every process in its group, at once."""
        if self._process is None:
            return
        self._killpg()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _killpg(self) -> None:
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _sweep_group(self, timeout: float = 10.0) -> None:
        # After the worker exits, nothing of its group may remain (a rank process orphaned
        # by a kill -9 of the worker, say). The group id is the worker's pid (own session).
        # SIGKILL is delivered asynchronously: wait until every member is dead (zombies, which
        # only their new parent can reap, count as dead).
        self._killpg()
        deadline = time.monotonic() + timeout
        while group_members(self._process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    import psutil

    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


@dataclass
class JobOutcome:
    returncode: int
    terminal: m.Finished | m.Stopped | m.Error | None
    loaded: m.Loaded | None
    events: list[m.WorkerEvent]


def run_job(
    job: m.JobSpec,
    workdir: str | Path,
    timeout: float,
    load_timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> JobOutcome:
    """Run a job to its end in a worker and return how it ended (never raises for an engine
    error: that is the outcome). The worker is stopped, then killed, past either timeout."""
    worker = EngineWorker(job, workdir, env=env)
    worker.start()
    try:
        first = worker.wait_for("loaded", "finished", "stopped", "error", timeout=load_timeout)
        if first.event == "loaded":
            worker.wait_for("finished", "stopped", "error", timeout=timeout)
        code = worker.wait(timeout=60)
    except WorkerError as err:
        code = worker.stop(timeout=30)
        if isinstance(err, WorkerTimeout):
            raise
        # Otherwise it exited without a last word (crashed, killed): its code says how.
    except BaseException:  # e.g. Ctrl-C in the caller: do not leave the engine running
        worker.stop(timeout=30)
        raise
    return JobOutcome(code, worker.terminal, worker.loaded, list(worker.history))
