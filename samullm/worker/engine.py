"""One vLLM engine in this process, stepped by hand, each step measured and shaped.

Imports vLLM: only the worker process imports this module. The engine core runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set by the worker before vLLM is imported) so that one
`LLMEngine.step()` is one scheduler iteration and its wall time is the iteration time; with
TP > 1 the ranks run in processes vLLM starts (the "mp" backend), children of this one.

Measurement hooks wrap four bound methods of the engine core's objects (this vLLM version:
0.32): `scheduler.schedule` (batch shape + time), `scheduler.update_from_output`,
`model_executor.sample_tokens` and the core's `step_fn`. Model execution time is the core step
minus scheduling, sampling and output update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from samullm.worker.batch_shape import BatchShape, ScheduledSeq, batch_shape
from samullm.worker.messages import IterationRecord, JobSpec, Row, RowResult, SamplingSpec


def engine_kwargs(job: JobSpec) -> dict[str, Any]:
    """EngineArgs for the job: options left None keep vLLM's defaults."""
    opts = job.engine
    kwargs: dict[str, Any] = dict(
        model=job.model,
        tensor_parallel_size=job.tensor_parallel_size,
        # TP=1 runs in this process; TP>1 starts one process per rank.
        distributed_executor_backend="mp" if job.tensor_parallel_size > 1 else "uni",
        dtype=opts.dtype,
        enforce_eager=opts.enforce_eager,
        enable_prefix_caching=opts.enable_prefix_caching,
        seed=opts.seed,
        disable_log_stats=True,
    )
    for name in (
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "block_size",
    ):
        value = getattr(opts, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


@dataclass
class _StepTimes:
    schedule_s: float = 0.0
    update_s: float = 0.0
    sample_s: float = 0.0
    core_s: float = 0.0
    shape: BatchShape | None = None
    num_waiting: int = 0
    num_preempted: int = 0

    def reset(self) -> None:
        self.schedule_s = self.update_s = self.sample_s = self.core_s = 0.0
        self.shape = None
        self.num_waiting = self.num_preempted = 0


class SteppedEngine:
    """An LLMEngine whose steps yield finished rows and an IterationRecord each."""

    def __init__(self, job: JobSpec):
        from vllm.engine.arg_utils import EngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.llm_engine import LLMEngine

        # LLM_CLASS: the defaults vllm.LLM uses (e.g. a larger token budget than the server's).
        self.engine = LLMEngine.from_engine_args(
            EngineArgs(**engine_kwargs(job)), usage_context=UsageContext.LLM_CLASS
        )
        self._core = self.engine.engine_core.engine_core  # in-process EngineCore
        self._scheduler = self._core.scheduler
        self._times = _StepTimes()
        try:
            self._warm_up()
            self._instrument()
        except BaseException:
            self.engine.engine_core.shutdown()
            raise
        self.loaded_at = time.perf_counter()
        self.steps = 0
        self.not_done: list[str] = []  # rows vLLM ended without a result (abort, internal error)
        self._shut_down = False
        # vLLM 0.32's CPU model runner crashes ("CPU Generator does not use offset") when a
        # seeded request's sample is discarded after a partial prefill chunk; on CPU the engine
        # seed alone governs sampling.
        self.per_row_seeds = job.device_kind != "cpu"

    def _warm_up(self) -> None:
        """Run one tiny request before anything is measured: the first step of an engine pays
        one-time set-up (seconds with TP=2 on CPU), which belongs to start-up, not to rows."""
        from vllm.sampling_params import SamplingParams

        vocab = self.engine.model_config.get_vocab_size()
        self.engine.add_request(
            "samullm-warm-up",
            self._engine_input({"prompt_token_ids": [i % vocab for i in range(4, 20)]}),
            SamplingParams(max_tokens=2, ignore_eos=True),
        )
        while self.engine.has_unfinished_requests():
            self.engine.step()

    # -- limits the simulator must replay -------------------------------------------------
    def limits(self) -> dict[str, int]:
        config = self.engine.vllm_config
        return dict(
            max_model_len=int(config.model_config.max_model_len),
            max_num_seqs=int(config.scheduler_config.max_num_seqs),
            max_num_batched_tokens=int(config.scheduler_config.max_num_batched_tokens),
            block_size=int(config.cache_config.block_size),
            kv_cache_blocks=int(config.cache_config.num_gpu_blocks or 0),
        )

    # -- instrumentation ------------------------------------------------------------------
    def _instrument(self) -> None:
        scheduler, core, executor = self._scheduler, self._core, self._core.model_executor
        times = self._times
        schedule, update, sample, step_fn = (
            scheduler.schedule,
            scheduler.update_from_output,
            executor.sample_tokens,
            core.step_fn,
        )

        def timed_schedule(*args, **kwargs):
            # Our bookkeeping counts as scheduling: the engine pays it on every step.
            t = time.perf_counter()
            output = schedule(*args, **kwargs)
            times.shape = self._shape_of(output)
            times.num_waiting = scheduler.get_request_counts()[1]
            times.num_preempted = len(output.preempted_req_ids or ())
            times.schedule_s += time.perf_counter() - t
            return output

        def timed_update(*args, **kwargs):
            t = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                times.update_s += time.perf_counter() - t

        def timed_sample(*args, **kwargs):
            t = time.perf_counter()
            try:
                return sample(*args, **kwargs)
            finally:
                times.sample_s += time.perf_counter() - t

        def timed_step(*args, **kwargs):
            t = time.perf_counter()
            try:
                return step_fn(*args, **kwargs)
            finally:
                times.core_s += time.perf_counter() - t

        scheduler.schedule = timed_schedule
        scheduler.update_from_output = timed_update
        executor.sample_tokens = timed_sample
        core.step_fn = timed_step

    def _shape_of(self, output) -> BatchShape:
        # schedule() has already advanced num_computed_tokens by the tokens it handed out.
        requests = self._scheduler.requests
        seqs = []
        for req_id, new_tokens in output.num_scheduled_tokens.items():
            request = requests[req_id]
            seqs.append(
                ScheduledSeq(
                    new_tokens=new_tokens,
                    computed_before=request.num_computed_tokens - new_tokens,
                    num_prompt_tokens=request.num_prompt_tokens,
                )
            )
        return batch_shape(seqs)

    # -- requests -------------------------------------------------------------------------
    def add(self, row: Row, sampling: SamplingSpec) -> str | None:
        """Submit a row; vLLM's reason if it refuses it (e.g. prompt longer than the context)."""
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        prompt: Any = (
            {"prompt_token_ids": row.prompt_token_ids}
            if row.prompt_token_ids is not None
            else {"prompt": row.prompt}
        )
        try:
            params = SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stop=list(sampling.stop) or None,
                seed=sampling.seed if self.per_row_seeds else None,
                ignore_eos=sampling.ignore_eos,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            self.engine.add_request(row.row_id, self._engine_input(prompt), params)
        except (VLLMClientError, ValueError) as err:
            return f"{type(err).__name__}: {err}"
        return None

    def _engine_input(self, prompt: dict[str, Any]):
        """Tokenize and check a prompt the way LLM.generate does (raises on a bad prompt)."""
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        (engine_input,) = self.engine.renderer.render_cmpl(
            [parse_model_prompt(self.engine.model_config, prompt)]
        )
        return engine_input

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self, wave: int = 0) -> tuple[list[RowResult], IterationRecord | None]:
        """One engine iteration: rows it finished, and its record (None if nothing ran)."""
        times = self._times
        times.reset()
        start = time.perf_counter()
        outputs = self.engine.step()
        elapsed = time.perf_counter() - start
        now = time.time()
        finished = []
        for out in outputs:
            if not out.finished:
                continue
            completion = out.outputs[0]
            if completion.finish_reason not in ("stop", "length", "repetition"):
                # vLLM's abort or retryable internal error: not a result; a rerun retries it.
                self.not_done.append(out.request_id)
                continue
            finished.append(
                RowResult(
                    row_id=out.request_id,
                    text=completion.text,
                    prompt_tokens=len(out.prompt_token_ids or ()),
                    output_tokens=len(completion.token_ids),
                    finish_reason=completion.finish_reason,
                    finished_at=now,
                )
            )
        shape = times.shape
        if shape is None or shape.prefill_seqs + shape.decode_seqs == 0:
            return finished, None
        record = IterationRecord(
            step=self.steps,
            wave=wave,
            start_s=start - self.loaded_at,
            iter_latency_s=elapsed,
            exec_s=max(0.0, times.core_s - times.schedule_s - times.update_s - times.sample_s),
            sample_s=times.sample_s,
            schedule_s=times.schedule_s,
            prefill_seqs=shape.prefill_seqs,
            prefill_tokens=shape.prefill_tokens,
            prefill_attention=shape.prefill_attention,
            decode_seqs=shape.decode_seqs,
            decode_context=shape.decode_context,
            decode_max_context=shape.decode_max_context,
            context_tokens=shape.context_tokens,
            max_seq_len=shape.max_seq_len,
            num_waiting=times.num_waiting,
            num_preempted=times.num_preempted,
            num_finished=len(finished),
        )
        self.steps += 1
        return finished, record

    def shutdown(self) -> None:
        """Stop the engine and its rank processes now (not at garbage collection)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.engine.engine_core.shutdown()
