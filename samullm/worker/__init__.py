"""Engine worker: one process per running node, owning one vLLM engine.

Public pieces (none imports vLLM; `engine.py` does and runs only in the worker process):
- messages: JobSpec, Handoff, EngineOptions, SamplingSpec, Row, RowResult, IterationRecord, events.
- handle: EngineWorker (start / poll_events / wait_for / hand_off / stop / kill), run_job.
- results: reading a node's result file and iteration log.
"""

from samullm.worker.handle import EngineWorker, JobOutcome, WorkerError, WorkerTimeout, run_job
from samullm.worker.messages import (
    EngineOptions,
    Handoff,
    IterationRecord,
    JobSpec,
    Row,
    RowResult,
    SamplingSpec,
    WorkerEvent,
)
from samullm.worker.results import done_row_ids, read_iterations, read_results

__all__ = [
    "EngineOptions",
    "EngineWorker",
    "Handoff",
    "IterationRecord",
    "JobOutcome",
    "JobSpec",
    "Row",
    "RowResult",
    "SamplingSpec",
    "WorkerError",
    "WorkerEvent",
    "WorkerTimeout",
    "done_row_ids",
    "read_iterations",
    "read_results",
    "run_job",
]
