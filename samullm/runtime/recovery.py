"""Engine workers left behind by a runner that died (kill -9, power cut of the parent only).

Each worker notices its parent is gone within a second and stops by itself (finished rows
kept, engine shut down). A restarted runner must still not start anything on their devices, nor
compute the missing rows of their nodes, while one of them may be writing: it finds the
workers of every launch the store has not closed (pid and process start time, recorded when
they started, so a pid since reused by another process is not mistaken for ours), waits for
them to exit, and kills their process groups after a grace period.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import psutil

START_TIME_TOLERANCE_S = 1.0


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def is_ours(pid: int, started_at: float | None) -> bool:
    """The process `pid` lives (not a zombie) and is the one that started at `started_at`."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_at is None or abs(process.create_time() - started_at) <= START_TIME_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False


def _group_alive(pgid: int) -> bool:
    from samullm.worker.handle import group_members

    return bool(group_members(pgid))


def wait_for_exit(workers: Iterable[tuple[int, float | None]], grace_s: float = 30.0) -> list[int]:
    """Wait until every listed worker (pid, start time) and its process group has exited; after
    `grace_s` SIGKILL the groups still alive and wait a little more. Returns the pids that
    were ours and alive when called."""
    ours = [pid for pid, started in workers if is_ours(pid, started)]
    # A worker runs in its own session: its pid is its process group (rank processes too).
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not any(is_ours(pid, None) or _group_alive(pid) for pid in ours):
            return ours
        time.sleep(0.2)
    for pid in ours:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    end = time.monotonic() + 10
    while time.monotonic() < end and any(_group_alive(pid) for pid in ours):
        time.sleep(0.1)
    return ours
