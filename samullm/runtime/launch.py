"""One launch of a node: its engine workers (one per data-parallel replica), as the runner
drives them from its loop thread without ever blocking on them.

A replica is a TP group of devices with its share of the node's rows. Its worker writes a part
file (`samullm.results`) and an iteration log; the launch tails the part so the store learns
each finished row within a tick. A replica ends when its process has exited (the handle's
`wait` then sweeps its process group, so its devices are truly free), or when its worker has
finished the rows and waits with its engine loaded for a handoff (`idle`: the runner then
keeps that engine for a node of the same model, `runtime/warm.py`, or lets it exit). A replica
may also start on such a waiting worker (`take_over`) instead of a new one. How it ended:

- "finished": the engine ran out of work;
- "stopped": the runner asked it to stop (re-plan, cancel, shutdown);
- "load_error": the job was refused or the engine failed to start (a reason the runner shows);
- "crashed": it died without a last word (kill -9, out of memory) or its engine failed
  mid-run: the runner may start it again with the rows still missing.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from samullm.results import PartTail
from samullm.runtime.reconcile import Placement
from samullm.worker.handle import EngineWorker
from samullm.worker.messages import Error, Finished, Handoff, JobSpec, Loaded, Stopped, Waiting, WorkerEvent

Outcome = str  # "finished" | "stopped" | "load_error" | "crashed"


@dataclass
class Replica:
    index: int
    devices: tuple[int, ...]
    rows: list[str]  # every row id this replica was given in this launch
    worker: EngineWorker | None = None
    tail: PartTail | None = None
    restarts: int = 0
    started_wall: float = 0.0  # unix time the current worker was started
    started_mono: float = 0.0
    loaded: Loaded | None = None
    seen: int = 0  # events of worker.history already handled
    ended: bool = False
    outcome: Outcome | None = None
    message: str | None = None
    finished: Finished | None = None
    iteration_logs: list[Path] = field(default_factory=list)
    since: int = 0  # index in worker.history where this replica's work began
    idle: bool = False  # ended with its worker alive, waiting with its engine loaded
    took_over: bool = False  # runs on a worker a finished node left, not one of its own

    def start(self, job: JobSpec, workdir: Path) -> None:
        self._begin(EngineWorker(job, workdir), job.result_path, job.iteration_log_path)
        self.worker.start()

    def take_over(self, worker: EngineWorker, handoff: Handoff) -> None:
        """Run this replica's rows on `worker`, which waits with the same engine loaded."""
        self._begin(worker, handoff.result_path, handoff.iteration_log_path)
        self.loaded = worker.loaded  # no load to wait for
        self.took_over = True
        worker.hand_off(handoff)

    def _begin(self, worker: EngineWorker, result_path: str, iteration_log_path: str | None) -> None:
        self.worker = worker
        self.tail = PartTail(result_path)
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.loaded = None
        self.finished = None
        self.seen = self.since = len(worker.history)
        self.ended = self.idle = self.took_over = False
        self.outcome = self.message = None
        if iteration_log_path:
            self.iteration_logs.append(Path(iteration_log_path))

    @property
    def alive(self) -> bool:
        return self.worker is not None and not self.ended

    def new_events(self) -> list[WorkerEvent]:
        """Events received since the last call (read from the worker's pipe now)."""
        if self.worker is None:
            return []
        self.worker.poll_events()
        events = self.worker.history[self.seen:]
        self.seen = len(self.worker.history)
        return events

    def exited(self) -> bool:
        return self.worker is not None and not self.worker.is_alive()

    def waiting(self) -> bool:
        """Its rows are done and its worker waits for a handoff (events read so far)."""
        mine = self.worker.history[self.since:] if self.worker is not None else []
        return bool(mine) and isinstance(mine[-1], Waiting) and any(isinstance(e, Finished) for e in mine)

    def settle_idle(self) -> None:
        """End this replica as finished while its worker stays up, engine loaded."""
        mine = self.worker.history[self.since:]
        self.finished = next(e for e in reversed(mine) if isinstance(e, Finished))
        self.outcome, self.ended, self.idle = "finished", True, True

    def reap(self) -> None:
        """After the process exited: sweep its group, read its last events, classify the end."""
        worker = self.worker
        try:
            worker.wait(timeout=15)
        except Exception:  # a rank process that will not die: kill the group
            worker.kill()
        terminal = worker.terminal
        if isinstance(terminal, Finished):
            self.outcome, self.finished = "finished", terminal
        elif isinstance(terminal, Stopped):
            self.outcome, self.message = "stopped", terminal.reason
        elif isinstance(terminal, Error) and terminal.stage in ("job", "load"):
            self.outcome, self.message = "load_error", terminal.message
        elif isinstance(terminal, Error):
            self.outcome, self.message = "crashed", f"engine failed while running: {terminal.message}"
        else:
            tail = worker.log_tail(5).strip().replace("\n", " | ")
            self.outcome = "crashed"
            self.message = f"engine worker {worker.pid} exited with code {worker.returncode} without a last word" + (
                f"; log tail: {tail[-400:]}" if tail else ""
            )
        self.ended = True

    def request_stop(self) -> None:
        if self.worker is not None and self.worker.is_alive() and not self.idle:
            try:
                os.kill(self.worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.worker is not None:
            self.worker.kill()


@dataclass
class Launch:
    """A node's engines on one placement, from start until every replica has exited."""

    attempt: int  # the node's launch number (NodeRun.attempt), names its files
    node_run_id: int
    placement: Placement
    replicas: list[Replica]
    stop_reason: str | None = None  # set when the runner asked it to stop
    stop_sent_at: float | None = None
    failure: str | None = None  # the node fails with this once the launch has ended
    loaded_recorded: bool = False

    @property
    def ended(self) -> bool:
        return all(r.ended or r.worker is None for r in self.replicas)

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_sent_at = time.monotonic()
        for r in self.replicas:
            r.request_stop()

    def pids(self) -> list[list[float]]:
        """[pid, process start time] of every worker started, for orphan recovery."""
        import psutil

        out = []
        for r in self.replicas:
            if r.worker is not None and r.worker.pid is not None:
                try:
                    out.append([r.worker.pid, psutil.Process(r.worker.pid).create_time()])
                except psutil.NoSuchProcess:
                    out.append([r.worker.pid, None])
        return out
