"""The engine worker process: `python -m samullm.worker --job FILE|- [--events-fd N]`.

It binds itself to the job's devices, starts one vLLM engine, submits the rows that have no
result yet (wave by wave), steps the engine, appends each step's finished rows to the result
file (flushed and fsynced before the next step), logs every iteration, and reports events as
JSON lines on the events channel. Exit codes are in messages.py.

Handoffs (`JobSpec.handoff_dir`): instead of exiting when its rows are done, the worker keeps
its engine and waits (event Waiting) for handoff files 1.json, 2.json, ... (`Handoff`, written
whole by the parent, `EngineWorker.hand_off`): each brings more rows for the same engine and
where to write them, or asks it to exit. A job with no rows then only loads the engine: its
rows can follow once they exist (an engine loaded ahead of its node's inputs), and a finished
node's engine can run the next node of the same model without a second load.

Stopping: SIGTERM (or the parent process going away) stops it between steps: finished rows are
kept, unfinished ones are dropped, the engine is shut down explicitly, any process it started
is killed, and it exits with EXIT_STOPPED. A restart with the same result file runs only the
rows that are missing.

Rows vLLM refuses (a prompt longer than the context, bad sampling values) fail one by one: they
are written with finish_reason "error" and the reason, and count as done; the other rows run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from samullm.devices import bind_devices
from samullm.errors import UserInputError
from samullm.worker import messages as m
from samullm.worker.results import ResultWriter, done_row_ids


class StopRequested(BaseException):
    """Raised by the SIGTERM handler while the engine is still loading (BaseException so that
    vLLM's `except Exception` blocks do not swallow it)."""


class EventChannel:
    """Writes one event per line and flushes; a vanished reader is ignored (we stop anyway)."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, event: m.WorkerEvent) -> None:
        with self._lock:
            try:
                self._stream.write(m.dump_event(event) + "\n")
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass


class StopFlag:
    """Set by SIGTERM or by the parent-death watch; raises while loading, flags afterwards."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.raise_on_signal = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.reason = self.reason or signal.Signals(signum).name
        if self.raise_on_signal:
            self.raise_on_signal = False  # once: cleanup must not be interrupted again
            raise StopRequested(self.reason)

    def watch_parent(self, interval_s: float = 1.0) -> None:
        """Stop as on SIGTERM when the parent dies (we are re-parented). Unlike
        PR_SET_PDEATHSIG this does not fire when only the parent's starting thread ends."""
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(interval_s)
            self.reason = self.reason or "parent process exited"
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def kill_descendants() -> None:
    """Kill every process this one started that is still alive (vLLM's rank processes)."""
    import psutil

    me = psutil.Process()
    children = me.children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=5)


def bind_this_process(job: m.JobSpec) -> None:
    """Apply the device binding before vLLM (and torch) are imported."""
    binding = bind_devices(
        job.device_kind, job.device_ids, job.tensor_parallel_size, job.device_cores
    )
    os.environ.update(binding.env)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    if binding.cpu_affinity is not None:
        os.sched_setaffinity(0, binding.cpu_affinity)


def check_model_path(model: str) -> None:
    """A local path that does not exist fails here, before the slow vLLM import; anything else
    (a hub name, a directory that is not a model) is left for vLLM to judge."""
    if os.path.isabs(model) or model.startswith((".", "~")):
        if not os.path.exists(os.path.expanduser(model)):
            raise UserInputError(f"model path {model} does not exist")


def load_job(source: str) -> m.JobSpec:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return m.JobSpec.model_validate_json(text)


class Worker:
    def __init__(self, job: m.JobSpec, events: EventChannel, stop: StopFlag):
        self.job = job
        self.events = events
        self.stop = stop
        self.rows_total = len(job.rows)
        self.rows_done = 0
        self.rows_failed = 0
        self.output_tokens = 0
        self.iterations = 0

    def run(self) -> int:
        todo = self._start_rows()
        if not todo and self.job.handoff_dir is None:
            return self._finished(0.0)

        engine = None
        try:
            try:
                t = time.perf_counter()
                import vllm  # noqa: F401  (timed apart from the engine start)

                import_s = time.perf_counter() - t
                from samullm.worker.engine import SteppedEngine

                t = time.perf_counter()
                engine = SteppedEngine(self.job)
                load_s = time.perf_counter() - t
            except StopRequested:
                raise
            except BaseException as err:  # vLLM raises many types, some not Exception
                self._error("load", err)
                return m.EXIT_ERROR
            self.events.send(
                m.Loaded(time=time.time(), import_s=import_s, load_s=load_s,
                         notes=self._notes(engine, todo), **engine.limits())
            )
            self.stop.raise_on_signal = False
            if self.stop.reason:
                return self._stopped()
            code = self._generate(engine, todo) if todo else self._finished(0.0)
            number = 1
            while code == m.EXIT_FINISHED and self.job.handoff_dir is not None:
                handoff = self._await_handoff(number)
                if not isinstance(handoff, m.Handoff):
                    return handoff  # an exit code
                number += 1
                self._take(handoff)
                engine.not_done.clear()
                todo = self._start_rows()
                code = self._generate(engine, todo) if todo else self._finished(0.0)
            return code
        except StopRequested:
            return self._stopped()
        except Exception as err:  # engine failure mid-run, result file not writable, ...
            self._error("run", err)
            return m.EXIT_ERROR
        finally:
            self.stop.raise_on_signal = False
            if engine is not None:
                try:
                    engine.shutdown()
                except Exception as err:  # still kill what it left behind, below
                    traceback.print_exception(err, file=sys.stderr)
            kill_descendants()

    def _start_rows(self) -> list[m.Row]:
        """The job's rows without a result yet; reports Started."""
        done = done_row_ids(self.job.result_path)
        todo = [row for row in self.job.rows if row.row_id not in done]
        self.rows_total = len(self.job.rows)
        self.rows_done = self.rows_total - len(todo)
        self.rows_failed = self.output_tokens = self.iterations = 0
        self.events.send(
            m.Started(time=time.time(), pid=os.getpid(), rows_total=self.rows_total, rows_done=self.rows_done)
        )
        return todo

    def _await_handoff(self, number: int) -> m.Handoff | int:
        """Wait for handoff file `number`.json: the handoff, or the exit code to end with (exit
        asked, stop requested, idle too long, unreadable handoff)."""
        path = Path(self.job.handoff_dir) / f"{number}.json"
        self.events.send(m.Waiting(time=time.time(), handoff=number))
        deadline = time.monotonic() + self.job.idle_timeout_s
        while not path.exists():
            if self.stop.reason:
                return self._stopped()
            if time.monotonic() >= deadline:
                self.stop.reason = f"no handoff within {self.job.idle_timeout_s:g} s"
                return self._stopped()
            time.sleep(0.05)
        try:
            handoff = m.Handoff.model_validate_json(path.read_text())
        except (OSError, ValidationError) as err:
            self.events.send(m.Error(time=time.time(), stage="job", message=f"bad handoff {path}: {err}"))
            return m.EXIT_BAD_JOB
        if handoff.exit:
            return m.EXIT_FINISHED
        return handoff

    def _take(self, handoff: m.Handoff) -> None:
        """Make the handoff this worker's job: same model, devices and engine, new rows."""
        self.job = self.job.model_copy(update={
            "rows": handoff.rows,
            "sampling": handoff.sampling or self.job.sampling,
            "result_path": handoff.result_path,
            "iteration_log_path": handoff.iteration_log_path,
        })

    def _notes(self, engine, todo: list[m.Row]) -> list[str]:
        notes = []
        if not engine.per_row_seeds and any((r.sampling or self.job.sampling).seed is not None for r in todo):
            notes.append(
                "per-row seeds ignored: vLLM's CPU backend fails on seeded requests under "
                "chunked prefill; the engine seed governs sampling"
            )
        return notes

    def _generate(self, engine, todo: list[m.Row]) -> int:
        job = self.job
        waves: dict[int, list[m.Row]] = defaultdict(list)
        for row in todo:
            waves[row.wave].append(row)
        writer = ResultWriter(job.result_path)
        iteration_log = open(job.iteration_log_path, "a") if job.iteration_log_path else None
        started = time.perf_counter()
        next_report = started + job.progress_interval_s
        try:
            for wave in sorted(waves):
                pending = sorted(waves[wave], key=lambda row: row.delay_steps)
                wave_steps = 0
                while pending or engine.has_unfinished():
                    if self.stop.reason:
                        return self._stopped()
                    due = 0
                    while due < len(pending) and pending[due].delay_steps <= wave_steps:
                        due += 1
                    self._submit(engine, pending[:due], writer)
                    del pending[:due]
                    if not engine.has_unfinished():
                        wave_steps += 1  # nothing to run: let the clock reach the next delay
                        continue
                    finished, record = engine.step(wave)
                    wave_steps += 1
                    self._record(writer.write(finished), finished)
                    if record is not None:
                        self.iterations += 1
                        if iteration_log is not None:
                            iteration_log.write(record.model_dump_json() + "\n")
                    now = time.perf_counter()
                    if now >= next_report:
                        next_report = now + job.progress_interval_s
                        if iteration_log is not None:
                            iteration_log.flush()
                        self._progress(now - started)
        finally:
            writer.close()
            if iteration_log is not None:
                iteration_log.close()
        if engine.not_done:
            print(f"rows ended by vLLM without a result (rerun retries them): {engine.not_done}", file=sys.stderr)
        return self._finished(time.perf_counter() - started)

    def _submit(self, engine, rows: list[m.Row], writer: ResultWriter) -> None:
        """Submit rows; those vLLM refuses are written at once as failed rows."""
        refused = []
        for row in rows:
            reason = engine.add(row, row.sampling or self.job.sampling)
            if reason is not None:
                refused.append(_refused(row, reason))
        self._record(writer.write(refused), refused)

    def _record(self, written: int, results: list[m.RowResult]) -> None:
        self.rows_done += written
        self.rows_failed += sum(r.finish_reason == "error" for r in results)
        self.output_tokens += sum(r.output_tokens for r in results)

    def _progress(self, elapsed: float) -> None:
        self.events.send(
            m.Progress(
                time=time.time(),
                rows_done=self.rows_done,
                rows_total=self.rows_total,
                rows_failed=self.rows_failed,
                output_tokens=self.output_tokens,
                iterations=self.iterations,
                elapsed_s=elapsed,
            )
        )

    def _finished(self, elapsed: float) -> int:
        self.events.send(
            m.Finished(
                time=time.time(),
                rows_done=self.rows_done,
                rows_total=self.rows_total,
                rows_failed=self.rows_failed,
                output_tokens=self.output_tokens,
                iterations=self.iterations,
                elapsed_s=elapsed,
            )
        )
        return m.EXIT_FINISHED

    def _stopped(self) -> int:
        self.events.send(
            m.Stopped(
                time=time.time(),
                rows_done=self.rows_done,
                rows_total=self.rows_total,
                reason=self.stop.reason or "stop requested",
            )
        )
        return m.EXIT_STOPPED

    def _error(self, stage: str, err: BaseException) -> None:
        traceback.print_exception(err, file=sys.stderr)
        self.events.send(
            m.Error(time=time.time(), stage=stage, message=_message(err), rows_done=self.rows_done)
        )


def _refused(row: m.Row, reason: str) -> m.RowResult:
    return m.RowResult(
        row_id=row.row_id,
        text="",
        prompt_tokens=len(row.prompt_token_ids) if row.prompt_token_ids is not None else 0,
        output_tokens=0,
        finish_reason="error",
        error=reason,
        finished_at=time.time(),
    )


def _message(err: BaseException) -> str:
    """vLLM's own message, following the chain to the root cause when it wraps one."""
    parts = [f"{type(err).__name__}: {err}"]
    cause = err.__cause__ or err.__context__
    while cause is not None and len(parts) < 4:
        parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return " <- ".join(parts)


def _open_events(events_fd: int | None) -> EventChannel:
    if events_fd is not None:
        return EventChannel(os.fdopen(events_fd, "w", buffering=1))
    # Events on stdout: keep a private copy of it and send everything else printed to stdout
    # (vLLM's logs, C libraries) to stderr, so the channel carries only events.
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return EventChannel(stream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samullm.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, help="job spec JSON file, or - for stdin")
    parser.add_argument("--events-fd", type=int, default=None, help="write events to this fd (default stdout)")
    args = parser.parse_args(argv)

    events = _open_events(args.events_fd)
    stop = StopFlag()
    stop.install()
    stop.watch_parent()
    try:
        job = load_job(args.job)
        check_model_path(job.model)
        bind_this_process(job)
    except (OSError, ValidationError, UserInputError) as err:
        events.send(m.Error(time=time.time(), stage="job", message=f"bad job: {err}"))
        return m.EXIT_BAD_JOB
    except StopRequested:
        events.send(m.Stopped(time=time.time(), rows_done=0, rows_total=0, reason=stop.reason or ""))
        return m.EXIT_STOPPED
    return Worker(job, events, stop).run()
