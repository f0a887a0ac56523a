"""The reference replay: vLLM's schedulers one iteration and one request at a time.

Slow and plain on purpose. It is the definition the event-driven replay (`replay.py`) is tested
against, and it reads beside vLLM's own code: `_schedule_v1` follows `Scheduler.schedule()` of
vllm/v1/core/sched/scheduler.py (0.32), `_schedule_v0` follows `Scheduler._schedule()` of vLLM
0.3.x (vllm/core/scheduler.py). Only what changes timing is kept: no prefix caching (every
prompt is new, and a preempted request recomputes everything), no speculative decoding, no
async scheduling (vLLM 0.32 overlaps scheduling with execution by default; a finished request's
blocks are then freed one step later than here).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

import numpy as np

from costmodel.engine_config import EngineConfig
from costmodel.interface import Batch, LatencyModel
from costmodel.simulate import IterationRecorder, SimResult


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(eq=False)
class Request:
    request_id: int  # also its arrival order
    num_prompt_tokens: int
    max_tokens: int  # the output length this request will reach
    num_output_tokens: int = 0
    num_computed_tokens: int = 0
    num_blocks: int = 0  # KV blocks it holds

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens


class _Engine:
    """Queues and the block pool of one engine."""

    def __init__(self, prompts: np.ndarray, outputs: np.ndarray, config: EngineConfig,
                 num_kv_blocks: int) -> None:
        self.config = config
        self.block_size = config.block_size
        self.waiting: deque[Request] = deque(
            Request(i, int(p), int(o)) for i, (p, o) in enumerate(zip(prompts, outputs)))
        self.running: list[Request] = []
        self.free_blocks = config.usable_blocks(num_kv_blocks)
        self.watermark_blocks = config.watermark_blocks(num_kv_blocks)
        self.num_preemptions = 0

    def allocate(self, request: Request, num_blocks: int) -> None:
        assert 0 <= num_blocks <= self.free_blocks
        self.free_blocks -= num_blocks
        request.num_blocks += num_blocks

    def free(self, request: Request) -> None:
        self.free_blocks += request.num_blocks
        request.num_blocks = 0

    def preempt(self, request: Request) -> None:
        """Recompute preemption: drop its KV, put it at the front of the waiting queue. The
        caller has already taken it out of `running`."""
        self.free(request)
        request.num_computed_tokens = 0
        self.waiting.appendleft(request)
        self.num_preemptions += 1


def _schedule_v1(engine: _Engine) -> list[tuple[Request, int]]:
    """One step of vLLM v1's scheduler; returns (request, num_new_tokens) pairs."""
    # The scheduling idea, as vLLM v1 states it: there is no prefill phase and no decode phase.
    # Every request has num_computed_tokens catching up with its num_tokens (prompt plus
    # outputs so far). Each step hands out token_budget = max_num_batched_tokens: first to the
    # running requests in admission order (a decoding request takes 1 token, a partly
    # prefilled one its next chunk), then to waiting requests in FCFS order while fewer than
    # max_num_seqs run and their whole sequence fits the free KV blocks. A running request
    # that cannot get a block preempts the most recently admitted one (recompute: back to the
    # front of the waiting queue with num_computed_tokens = 0); a step that preempted admits
    # nobody.
    config = engine.config
    block_size = engine.block_size
    token_budget = int(config.max_num_batched_tokens)
    scheduled: list[tuple[Request, int]] = []
    preempted = False

    # First, the RUNNING requests, in admission order.
    req_index = 0
    while req_index < len(engine.running) and token_budget > 0:
        request = engine.running[req_index]
        num_new_tokens = min(request.num_tokens - request.num_computed_tokens, token_budget)
        needed = cdiv(request.num_computed_tokens + num_new_tokens, block_size) - request.num_blocks
        can_schedule = True
        while needed > engine.free_blocks:
            preempted_req = engine.running.pop()  # the most recently admitted
            engine.preempt(preempted_req)
            preempted = True
            if preempted_req is request:
                can_schedule = False
                break
        if not can_schedule:
            break
        engine.allocate(request, needed)
        scheduled.append((request, num_new_tokens))
        token_budget -= num_new_tokens
        req_index += 1

    # Next, the WAITING requests (FCFS), unless this step preempted.
    if not preempted:
        while token_budget > 0 and engine.waiting and len(engine.running) < config.max_num_seqs:
            request = engine.waiting[0]
            # scheduler_reserve_full_isl: the whole current sequence must fit the free blocks.
            watermark = engine.watermark_blocks if engine.running else 0
            if cdiv(request.num_tokens, block_size) + watermark > engine.free_blocks:
                break
            num_new_tokens = request.num_tokens
            if not config.chunked_prefill and num_new_tokens > token_budget:
                break
            num_new_tokens = min(num_new_tokens, token_budget)
            engine.waiting.popleft()
            engine.running.append(request)
            engine.allocate(request, cdiv(num_new_tokens, block_size))
            scheduled.append((request, num_new_tokens))
            token_budget -= num_new_tokens
    return scheduled


def _schedule_v0(engine: _Engine) -> tuple[list[tuple[Request, int]], int]:
    """One step of vLLM 0.3.x's scheduler: a padded prompt batch if any waiting request fits,
    else a decode of every running request. Returns (request, num_new_tokens) pairs and the
    padded prompt length (0 for a decode step)."""
    config = engine.config
    block_size = engine.block_size

    # Join waiting sequences if possible.
    seq_lens: list[int] = []
    admitted: list[tuple[Request, int]] = []
    while engine.waiting:
        request = engine.waiting[0]
        num_prompt_tokens = request.num_tokens
        required = cdiv(num_prompt_tokens, block_size)
        if engine.free_blocks - required < engine.watermark_blocks:  # can_allocate: LATER
            break
        new_seq_lens = seq_lens + [num_prompt_tokens]
        num_batched_tokens = len(new_seq_lens) * max(new_seq_lens)
        if num_batched_tokens > config.max_num_batched_tokens:
            break
        if len(engine.running) + 1 > config.max_num_seqs:
            break
        num_paddings = num_batched_tokens - sum(new_seq_lens)
        if config.max_paddings is not None and num_paddings > config.max_paddings:
            break
        seq_lens = new_seq_lens
        engine.waiting.popleft()
        engine.allocate(request, required)
        bisect.insort(engine.running, request, key=lambda r: r.request_id)
        admitted.append((request, num_prompt_tokens))
    if admitted:
        return admitted, max(seq_lens)

    # Reserve a new token slot for every running request, in arrival order; a request needs a
    # free block to go on (can_append_slot), else the latest arrival is preempted.
    queue = deque(engine.running)
    kept: list[Request] = []
    while queue:
        request = queue.popleft()
        preempted_self = False
        while engine.free_blocks < 1:
            if queue:
                engine.preempt(queue.pop())
            else:
                engine.preempt(request)
                preempted_self = True
                break
        if preempted_self:
            break
        engine.allocate(request, cdiv(request.num_computed_tokens + 1, block_size)
                        - request.num_blocks)
        kept.append(request)
    engine.running = kept
    return [(request, 1) for request in kept], 0


def _batch(scheduled: list[tuple[Request, int]], padded_len: int) -> Batch:
    if padded_len:  # v0 prompt batch: every sequence computes padded_len tokens
        n = len(scheduled)
        return Batch(prefill_seqs=n, prefill_tokens=n * padded_len,
                     prefill_attention=float(n * padded_len * padded_len))
    prefill_seqs = prefill_tokens = decode_seqs = decode_context = decode_max_context = 0
    prefill_attention = 0.0
    for request, n in scheduled:
        c = request.num_computed_tokens
        if n == 1 and c == request.num_tokens - 1:
            decode_seqs += 1
            decode_context += c + 1
            decode_max_context = max(decode_max_context, c + 1)
        else:
            prefill_seqs += 1
            prefill_tokens += n
            prefill_attention += n * (c + n)
    return Batch(prefill_seqs=prefill_seqs, prefill_tokens=prefill_tokens,
                 prefill_attention=prefill_attention, decode_seqs=decode_seqs,
                 decode_context=decode_context, decode_max_context=decode_max_context)


def replay_reference(prompts: np.ndarray, outputs: np.ndarray, latency: LatencyModel,
                     config: EngineConfig, num_kv_blocks: int, *,
                     record_iterations: bool = False) -> SimResult:
    """Step-by-step replay; same contract as costmodel.replay.replay."""
    engine = _Engine(prompts, outputs, config, num_kv_blocks)
    finish_times = np.zeros(len(prompts))
    recorder = IterationRecorder() if record_iterations else None
    now = 0.0
    num_iterations = 0
    while engine.waiting or engine.running:
        if config.policy == "v1":
            scheduled, padded_len = _schedule_v1(engine), 0
        else:
            scheduled, padded_len = _schedule_v0(engine)
        if not scheduled:
            raise RuntimeError("replay stalled: nothing could be scheduled")
        batch = _batch(scheduled, padded_len)
        duration = latency.iteration_time(batch)
        if recorder is not None:
            recorder.add(now, duration, batch)
        now += duration
        num_iterations += 1
        for request, n in scheduled:
            request.num_computed_tokens += n
            if request.num_computed_tokens == request.num_tokens:  # sampled a token
                request.num_output_tokens += 1
                if request.num_output_tokens == request.max_tokens:
                    engine.free(request)
                    engine.running.remove(request)
                    finish_times[request.request_id] = now
    return SimResult(total_time=now, finish_times=finish_times, num_iterations=num_iterations,
                     num_preemptions=engine.num_preemptions,
                     iterations=recorder.log() if recorder else None)
