"""Plain data exchanged with an engine worker: the job it runs, the records it writes, the
events it reports. Nothing here imports vLLM; the runner, the store and the CLI read these.

- `JobSpec` (parent -> worker, a JSON file or stdin): model, TP degree, devices, engine options,
  rows and where to write.
- `RowResult` (worker -> result file, one JSON line per finished row): the node's output column.
- `IterationRecord` (worker -> iteration log, one JSON line per engine step): batch shape and time.
- `WorkerEvent` (worker -> parent, one JSON line each on the events pipe): lifecycle and progress.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not a no-op


class EngineOptions(_Spec):
    """vLLM engine arguments the plan controls; None leaves vLLM's default."""

    max_model_len: int | None = Field(default=None, gt=0)
    dtype: str = "bfloat16"
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    # Fraction of device memory for weights + KV cache; on vLLM's CPU backend a fraction of RAM.
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    # KV cache size in bytes; takes precedence over gpu_memory_utilization (CPU and GPU).
    kv_cache_memory_bytes: int | None = Field(default=None, gt=0)
    block_size: int | None = Field(default=None, gt=0)
    enforce_eager: bool = True
    # Off by default: prefix-cache hits change iteration costs in ways the simulator ignores.
    enable_prefix_caching: bool = False
    seed: int = 0


class SamplingSpec(_Spec):
    max_tokens: int = Field(default=16, gt=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False


class Row(_Spec):
    """One request: a prompt as text or token ids, and its own sampling parameters if any.

    wave: rows are submitted wave by wave (0 first); a wave starts once the engine has finished
    every earlier row. delay_steps: the row is submitted after its wave has run that many engine
    steps. A node's rows are all wave 0 with no delay; the profiler uses both to shape batches
    (e.g. a prompt arriving while other rows decode).
    """

    row_id: str
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    sampling: SamplingSpec | None = None
    wave: int = Field(default=0, ge=0)
    delay_steps: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_prompt(self) -> Row:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise ValueError(f"row {self.row_id!r}: give exactly one of prompt, prompt_token_ids")
        return self


class JobSpec(_Spec):
    """Everything one engine worker runs. Paths are used as given (make them absolute)."""

    model: str
    tensor_parallel_size: int = Field(default=1, ge=1)
    device_kind: Literal["cpu", "gpu"] = "cpu"
    device_ids: list[int] = Field(default_factory=lambda: [0])
    # CPU only: cores of each device id (index = id); default device i = core i.
    device_cores: list[list[int]] | None = None
    engine: EngineOptions = Field(default_factory=EngineOptions)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)  # rows without their own
    rows: list[Row]
    result_path: str
    iteration_log_path: str | None = None
    progress_interval_s: float = Field(default=1.0, gt=0)
    # Keep the engine once the rows are done and wait for handoffs (`Handoff`, files 1.json,
    # 2.json, ... in this folder): more rows for the same engine, e.g. the next node of the same
    # model (no second load), or the rows of a node whose engine was loaded ahead of its inputs
    # (a job with no rows loads its engine and waits).
    handoff_dir: str | None = None
    # A waiting worker ends (Stopped) after this long without a handoff, so that a forgotten
    # one does not hold its devices forever.
    idle_timeout_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _unique_rows(self) -> JobSpec:
        _check_unique(self.rows)
        return self


class Handoff(_Spec):
    """More work for a worker that waits with its engine loaded (`JobSpec.handoff_dir`): rows
    with where to write them, or `exit` to end the worker. The rows run as a job would, with
    the same model, devices and engine."""

    rows: list[Row] = Field(default_factory=list)
    sampling: SamplingSpec | None = None  # for rows without their own; None keeps the job's
    result_path: str | None = None
    iteration_log_path: str | None = None
    exit: bool = False

    @model_validator(mode="after")
    def _complete(self) -> Handoff:
        if not self.exit and self.result_path is None:
            raise ValueError("a handoff with rows needs a result_path (or set exit)")
        _check_unique(self.rows)
        return self


def _check_unique(rows: list[Row]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row.row_id in seen:
            raise ValueError(f"row id {row.row_id!r} appears more than once")
        seen.add(row.row_id)


FinishReason = Literal["stop", "length", "repetition", "error"]


class RowResult(BaseModel):
    """One finished row. finish_reason "error" means vLLM refused the row (e.g. a prompt longer
    than the context); `error` then holds its message. Such rows count as done. (Rows vLLM
    ends with its own "abort" or retryable "error" are not written: a rerun retries them.)"""

    row_id: str
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    error: str | None = None
    finished_at: float  # unix time


class IterationRecord(BaseModel):
    """One engine step: its batch (fields as costmodel.interface.Batch) and its times.

    A sequence is decoding when it computes one token after its whole prompt; every other
    scheduled sequence (a prompt or a chunk of one, or a preempted sequence recomputing) is
    prefilling. decode_context counts each decoding sequence's tokens including the new one;
    prefill_attention sums new_tokens * (computed_before + new_tokens).
    """

    step: int
    wave: int
    start_s: float  # since the engine finished loading
    iter_latency_s: float  # the whole LLMEngine.step(): schedule, model, sampling, outputs
    exec_s: float  # model execution (forward pass), including rank communication
    sample_s: float
    schedule_s: float
    prefill_seqs: int
    prefill_tokens: int
    prefill_attention: float
    decode_seqs: int
    decode_context: int
    decode_max_context: int  # the longest decoding sequence
    context_tokens: int  # sum over scheduled sequences of their length after this step
    max_seq_len: int  # longest sequence after this step
    num_waiting: int  # requests still queued after scheduling
    num_preempted: int
    num_finished: int

    @property
    def num_seqs(self) -> int:
        return self.prefill_seqs + self.decode_seqs

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    @property
    def phase(self) -> Literal["prefill", "decode", "mixed", "idle"]:
        if self.prefill_seqs and self.decode_seqs:
            return "mixed"
        if self.prefill_seqs:
            return "prefill"
        return "decode" if self.decode_seqs else "idle"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)
    time: float  # unix time at the worker


class Started(_Event):
    event: Literal["started"] = "started"
    pid: int
    rows_total: int
    rows_done: int  # already in the result file from an earlier run


class Loaded(_Event):
    """The engine is up. load_s: engine construction (weights, KV cache) and one warm-up
    request; import_s: `import vllm`. The rest are the limits the simulator must replay."""

    event: Literal["loaded"] = "loaded"
    import_s: float
    load_s: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    kv_cache_blocks: int
    notes: list[str] = Field(default_factory=list)  # departures from the job as given


class Waiting(_Event):
    """The rows are done and the engine stays loaded (`JobSpec.handoff_dir`): the worker waits
    for handoff file `handoff`.json. A handoff with rows starts again with Started."""

    event: Literal["waiting"] = "waiting"
    handoff: int


class Progress(_Event):
    event: Literal["progress"] = "progress"
    rows_done: int
    rows_total: int
    rows_failed: int
    output_tokens: int  # generated by this run
    iterations: int
    elapsed_s: float  # since loaded


class Finished(_Event):
    """The engine ran out of work. rows_done < rows_total only if vLLM aborted some rows."""

    event: Literal["finished"] = "finished"
    rows_done: int
    rows_total: int
    rows_failed: int
    output_tokens: int
    iterations: int
    elapsed_s: float


class Stopped(_Event):
    """Stop was requested (SIGTERM or parent gone): finished rows are kept, the rest not run."""

    event: Literal["stopped"] = "stopped"
    rows_done: int
    rows_total: int
    reason: str


class Error(_Event):
    """The job could not run: bad job spec, engine failed to start, or failed while running."""

    event: Literal["error"] = "error"
    stage: Literal["job", "load", "run"]
    message: str
    rows_done: int = 0


WorkerEvent = Annotated[
    Started | Loaded | Waiting | Progress | Finished | Stopped | Error, Field(discriminator="event")
]
TERMINAL_EVENTS = ("finished", "stopped", "error")

_event_adapter: TypeAdapter[WorkerEvent] = TypeAdapter(WorkerEvent)


def parse_event(line: str | bytes) -> WorkerEvent:
    return _event_adapter.validate_json(line)


def dump_event(event: WorkerEvent) -> str:
    return event.model_dump_json()

# Worker exit codes: the event says more, these say enough when the events pipe was lost.
EXIT_FINISHED = 0
EXIT_ERROR = 1  # engine failed to start or to run
EXIT_BAD_JOB = 2
EXIT_STOPPED = 3  # stop requested; finished rows kept
