"""How long one engine takes on a request set: a replay of vLLM's scheduler.

`simulate(input_lens, output_lens, latency, config, num_kv_blocks)` replays the scheduler of
`config.policy` ("v1": vLLM v1's; "v0_padded": the early-2024 engine behind the A100
measurements) iteration by iteration, costs each iteration with the latency model, and returns
the total time, every request's finish time and counts. All requests are present at time 0, in
the given order (offline inference: FCFS = list order).

Two replays obey the same rules:
- `costmodel.replay` (default): event-driven. Between scheduling events it takes whole runs of
  pure-decode iterations at once (costed in closed form by `decode_run_time`); it schedules
  first and costs all its events afterwards, with numpy when the latency model offers
  `iteration_times`/`decode_run_times`. 10,000 requests take a fraction of a second.
- `costmodel.replay_reference` (`exact=True`): one iteration at a time, one request at a time,
  written to be read beside vLLM's `Scheduler.schedule()`. Tests hold the two equal.

What a request costs: prompt `P` tokens, output `L` tokens. Its prefill computes P tokens and
samples the first output token; each later iteration computes one token and samples the next; it
finishes after sampling its L-th token, having held KV slots for P + L - 1 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from costmodel.engine_config import EngineConfig
from costmodel.errors import UserInputError
from costmodel.interface import Batch, LatencyModel


@dataclass(frozen=True)
class IterationLog:
    """One row per simulated iteration: its start time, duration and batch."""

    start: np.ndarray
    duration: np.ndarray
    prefill_seqs: np.ndarray
    prefill_tokens: np.ndarray
    prefill_attention: np.ndarray
    decode_seqs: np.ndarray
    decode_context: np.ndarray
    decode_max_context: np.ndarray

    def __len__(self) -> int:
        return len(self.duration)

    def batch(self, i: int) -> Batch:
        return Batch(prefill_seqs=int(self.prefill_seqs[i]),
                     prefill_tokens=int(self.prefill_tokens[i]),
                     prefill_attention=float(self.prefill_attention[i]),
                     decode_seqs=int(self.decode_seqs[i]),
                     decode_context=int(self.decode_context[i]),
                     decode_max_context=int(self.decode_max_context[i]))


@dataclass
class IterationRecorder:
    """Collects iteration rows while a replay runs (used only when recording)."""

    rows: list[tuple[float, float, int, int, float, int, int, int]] = field(default_factory=list)

    def add(self, start: float, duration: float, batch: Batch) -> None:
        self.rows.append((start, duration, batch.prefill_seqs, batch.prefill_tokens,
                          batch.prefill_attention, batch.decode_seqs, batch.decode_context,
                          batch.decode_max_context))

    def log(self) -> IterationLog:
        cols = list(zip(*self.rows)) if self.rows else [()] * 8
        kinds = (float, float, np.int64, np.int64, float, np.int64, np.int64, np.int64)
        return IterationLog(*(np.asarray(c, dtype=k) for c, k in zip(cols, kinds)))


@dataclass(frozen=True)
class SimResult:
    """What one simulated engine run produced.

    finish_times[i]: seconds from the start until request i sampled its last token.
    num_preemptions: requests preempted (each one recomputes its tokens when it resumes).
    iterations: the iteration log, only when the replay was asked to record it.
    """

    total_time: float
    finish_times: np.ndarray
    num_iterations: int
    num_preemptions: int
    iterations: IterationLog | None = None

    def completed_by(self, seconds: float) -> int:
        """How many requests have finished `seconds` after the start."""
        return int(np.count_nonzero(self.finish_times <= seconds))

    def completed_mask(self, seconds: float) -> np.ndarray:
        """Which requests have finished `seconds` after the start."""
        return self.finish_times <= seconds


def simulate(input_lens: Sequence[int] | np.ndarray, output_lens: Sequence[int] | np.ndarray,
             latency: LatencyModel, config: EngineConfig, num_kv_blocks: int, *,
             record_iterations: bool = False, exact: bool = False) -> SimResult:
    """Replay one engine over the requests (all submitted at time 0, in order).

    input_lens / output_lens: prompt and output tokens per request (output >= 1).
    config: engine settings; max_model_len must be set (see EngineConfig.resolved).
    num_kv_blocks: KV-cache blocks of the engine (costmodel.engine_config.num_kv_blocks).
    record_iterations: keep the per-iteration log. Decode runs are then costed one iteration at
      a time, so total_time may differ from an unrecorded run in the last float digits.
    exact: use the step-by-step reference replay (slow; for tests and checking).
    """
    prompts, outputs = check_requests(input_lens, output_lens, config, num_kv_blocks)
    config = config.resolved(config.max_model_len)
    if exact:
        from costmodel.replay_reference import replay_reference as replay
    else:
        from costmodel.replay import replay
    return replay(prompts, outputs, latency, config, int(num_kv_blocks),
                  record_iterations=record_iterations)


def check_requests(input_lens, output_lens, config: EngineConfig,
                   num_kv_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer arrays of the requests, or UserInputError naming the first one that cannot run."""
    prompts = _lengths_array(input_lens, "input_lens")
    outputs = _lengths_array(output_lens, "output_lens")
    if prompts.shape != outputs.shape:
        raise UserInputError(
            f"input_lens has {prompts.size} requests but output_lens has {outputs.size}")
    if config.max_model_len is None:
        raise UserInputError("config.max_model_len is not set; call config.resolved(...) with "
                             "the model's max_position_embeddings first")
    config = config.resolved(config.max_model_len)
    if num_kv_blocks < 1:
        raise UserInputError(f"num_kv_blocks must be positive, got {num_kv_blocks}")
    if prompts.size == 0:
        return prompts, outputs

    max_model_len = int(config.max_model_len)
    totals = prompts + outputs
    _first_bad(totals > max_model_len, lambda i: (
        f"request {i}: input {prompts[i]} + output {outputs[i]} tokens exceed max_model_len "
        f"{max_model_len}; truncate its output to max_model_len - input or drop it"))

    # Peak KV slots: prompt + output - 1 (the last sampled token is never computed).
    peak_blocks = -(-(totals - 1) // config.block_size)
    usable = config.usable_blocks(num_kv_blocks)
    limit = usable
    too_big = peak_blocks > limit
    if config.policy == "v0_padded":
        # Admission keeps the watermark free, and a running request needs a free block to go on
        # even when it needs no new one (else it preempts itself, again and again).
        limit = usable - config.watermark_blocks(num_kv_blocks)
        too_big = (peak_blocks > limit) | (-(-(totals - 2) // config.block_size) + 1 > usable)
    _first_bad(too_big, lambda i: (
        f"request {i} (input {prompts[i]}, output {outputs[i]}) needs {peak_blocks[i]} KV blocks "
        f"of {config.block_size} tokens but the engine has only {limit} usable; it can never "
        f"fit. Give the engine more memory (TP degree, device) or shorten the request"))

    if not config.chunked_prefill:
        # A preempted request recomputes prompt + outputs so far in one iteration.
        budget = int(config.max_num_batched_tokens)
        _first_bad(totals - 1 > budget, lambda i: (
            f"request {i} may need {totals[i] - 1} tokens in one prefill iteration but "
            f"max_num_batched_tokens is {budget} and chunked prefill is off; raise "
            f"max_num_batched_tokens to at least max_model_len"))
    return prompts, outputs


def _lengths_array(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise UserInputError(f"{name} must be a one-dimensional list of token counts")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise UserInputError(f"{name} must hold whole token counts")
    array = array.astype(np.int64)
    _first_bad(array < 1, lambda i: f"{name}[{i}] is {array[i]}; every request needs >= 1 token")
    return array


def _first_bad(mask: np.ndarray, message) -> None:
    if mask.any():
        i = int(np.argmax(mask))
        extra = int(mask.sum()) - 1
        suffix = f" ({extra} more requests have the same problem)" if extra else ""
        raise UserInputError(message(i) + suffix)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["IterationLog", "SimResult", "simulate", "check_requests"]
