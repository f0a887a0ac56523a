"""The event-driven replay of vLLM's schedulers (the default behind `simulate`).

It obeys the rules of `replay_reference.py` exactly (tests hold the two to the same iterations,
preemptions and finish times), but it does not visit every iteration. Between scheduling events
the batch is the same set of decoding requests, each computing one token per iteration; such a
run of k iterations is costed with one `LatencyModel.decode_run_time` call. Events are:
- a request finishes (a heap keyed on the decode iteration of its last token);
- a waiting request can be admitted (possible only right after blocks were freed);
- a prefill chunk is in flight (v1: at most one request is part-way through its prefill, and it
  is always the last of the running queue);
- the KV blocks run short (found in O(log n), never stepped through).

Decoding requests are kept in aggregate so that each event costs O(log n). Every decoding
request has num_computed_tokens = offset + tau, where tau counts the iterations that advance all
decoders (every iteration under v1; decode iterations under v0). With
offset = block_size * a + p (0 <= p < block_size), the blocks it holds at the start of iteration
tau are cdiv(offset + tau, block_size) = a + u + [p >= block_size - v], where
tau + block_size - 1 = block_size * u + v. Summed over the n decoders:
    held(tau) = sum(a) + n * u + #{p >= block_size - v},
kept with sum(a), n and a sorted list of the p values. Only decoders and the one partial prefill
hold blocks, so free = usable - partial_blocks - held(tau); and the iteration in which the
decoders' growth exhausts the free blocks is found by inverting held().
"""

from __future__ import annotations

import heapq
import inspect
from bisect import bisect_left, insort
from collections import deque

import numpy as np

from costmodel.engine_config import EngineConfig
from costmodel.interface import Batch, LatencyModel
from costmodel.simulate import IterationRecorder, SimResult


def _takes_max_context(latency: LatencyModel) -> bool:
    """Whether decode_run_time accepts decode_max_context (the longest context at the run's
    start; it grows by one per iteration). Optional in the LatencyModel protocol."""
    try:
        return "decode_max_context" in inspect.signature(latency.decode_run_time).parameters
    except (TypeError, ValueError):
        return False


class _Replay:
    """One engine's state. Request i has prompt[i] tokens and will reach out_len[i] output
    tokens; num_output[i] is how many it had when it was last (re)admitted."""

    def __init__(self, prompts: np.ndarray, outputs: np.ndarray, latency: LatencyModel,
                 config: EngineConfig, num_kv_blocks: int, record: bool) -> None:
        self.prompt: list[int] = prompts.tolist()
        self.out_len: list[int] = outputs.tolist()
        self.num_output = [0] * len(self.prompt)
        self.latency = latency
        self.max_context_kw = _takes_max_context(latency)
        self.config = config
        self.block_size = config.block_size
        self.usable = config.usable_blocks(num_kv_blocks)
        self.watermark_blocks = config.watermark_blocks(num_kv_blocks)
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = int(config.max_num_batched_tokens)

        self.waiting: deque[int] = deque(range(len(self.prompt)))
        self.running: list[int] = []  # v0: decoding requests in arrival order
        self.offset = [0] * len(self.prompt)  # decoder: num_computed_tokens - tau
        self.epoch = [0] * len(self.prompt)  # bumped on preemption: its heap entry is stale
        self.n = 0
        self.sum_offset = 0
        self.sum_a = 0
        self.phases: list[int] = []  # sorted offset % block_size of the decoders
        self.offsets: list[int] = []  # sorted offsets of the decoders (for the longest one)
        self.finish_heap: list[tuple[int, int, int]] = []  # (last decode tau, request, epoch)

        self.tau = 0
        self.now = 0.0
        self.num_iterations = 0
        self.num_preemptions = 0
        self.num_finished = 0
        self.finish_times: list[float] = [0.0] * len(self.prompt)
        self.recorder = IterationRecorder() if record else None

    def result(self) -> SimResult:
        return SimResult(total_time=self.now, finish_times=np.asarray(self.finish_times),
                         num_iterations=self.num_iterations,
                         num_preemptions=self.num_preemptions,
                         iterations=self.recorder.log() if self.recorder else None)

    # ---- decoders in aggregate (used by the v0 replay; run_v1 inlines the same) --------------
    def held(self, tau: int) -> int:
        """KV blocks the decoders hold at the start of decode iteration tau."""
        u, v = divmod(tau + self.block_size - 1, self.block_size)
        return self.sum_a + self.n * u + self.n - bisect_left(self.phases, self.block_size - v)

    def first_exceeding(self, limit: int) -> int:
        """The first decode iteration whose block allocations bring the decoders' blocks above
        `limit`: the smallest tau with held(tau + 1) > limit (needs n > 0)."""
        q, m = divmod(limit - self.sum_a, self.n)
        return self.block_size * q - self.phases[self.n - 1 - m]

    def add_decoder(self, i: int, num_computed_tokens: int) -> None:
        """Request i has sampled a token and has num_computed_tokens = its tokens - 1; it
        decodes from iteration self.tau on."""
        off = num_computed_tokens - self.tau
        self.offset[i] = off
        self.n += 1
        self.sum_offset += off
        a, p = divmod(off, self.block_size)
        self.sum_a += a
        insort(self.phases, p)
        insort(self.offsets, off)
        heapq.heappush(self.finish_heap,
                       (self.prompt[i] + self.out_len[i] - 2 - off, i, self.epoch[i]))

    def drop_decoder(self, i: int) -> None:
        off = self.offset[i]
        self.n -= 1
        self.sum_offset -= off
        a, p = divmod(off, self.block_size)
        self.sum_a -= a
        del self.phases[bisect_left(self.phases, p)]
        del self.offsets[bisect_left(self.offsets, off)]

    def decode_batch(self) -> Batch:
        tau = self.tau
        return Batch(decode_seqs=self.n, decode_context=self.sum_offset + self.n * (tau + 1),
                     decode_max_context=self.offsets[-1] + tau + 1 if self.n else 0)

    def next_finish(self) -> int:
        heap, epoch = self.finish_heap, self.epoch
        while heap[0][2] != epoch[heap[0][1]]:
            heapq.heappop(heap)
        return heap[0][0]

    def finish_decoders(self, tau: int) -> None:
        """Decoders whose last token was sampled by decode iteration tau (just executed)."""
        heap, epoch = self.finish_heap, self.epoch
        while heap and heap[0][0] <= tau:
            _, i, ep = heapq.heappop(heap)
            if ep == epoch[i]:
                self.drop_decoder(i)
                self.running.remove(i)
                self.finish_times[i] = self.now
                self.num_finished += 1

    def preempt_decoder(self, i: int, tau: int) -> int:
        """Recompute preemption of decoder i before iteration tau (the caller took it out of
        `running`); returns the blocks it frees."""
        num_computed = self.offset[i] + tau
        self.drop_decoder(i)
        self.epoch[i] += 1
        self.num_output[i] = num_computed + 1 - self.prompt[i]
        self.waiting.appendleft(i)
        self.num_preemptions += 1
        return -(-num_computed // self.block_size)

    def prefilled(self, i: int, num_computed_tokens: int) -> None:
        """Request i computed all its tokens and sampled one more: done, or a decoder."""
        outputs = self.num_output[i] + 1
        self.num_output[i] = outputs
        if outputs == self.out_len[i]:
            self.finish_times[i] = self.now
            self.num_finished += 1
        else:
            self.add_decoder(i, num_computed_tokens)
            self.running.append(i)

    def execute(self, batch: Batch) -> None:
        duration = self.latency.iteration_time(batch)
        if self.recorder is not None:
            self.recorder.add(self.now, duration, batch)
        self.now += duration
        self.num_iterations += 1

    def run_decodes(self, k: int) -> None:
        """Execute k pure-decode iterations of the current decoders."""
        batch = self.decode_batch()
        if self.recorder is not None:
            self.now = _record_decode_run(self.recorder, self.latency, batch, k, self.now)
        elif self.max_context_kw:
            self.now += self.latency.decode_run_time(batch.decode_seqs, batch.decode_context, k,
                                                     decode_max_context=batch.decode_max_context)
        else:
            self.now += self.latency.decode_run_time(batch.decode_seqs, batch.decode_context, k)
        self.tau += k
        self.num_iterations += k

    # ---- vLLM v1 ----------------------------------------------------------------------------
    def run_v1(self) -> None:
        """The v1 replay: one loop with its state in local variables, as it is the hot path
        (the helper methods above do the same bookkeeping for the v0 replay)."""
        prompt, out_len, num_output = self.prompt, self.out_len, self.num_output
        last_computed = [p + o - 2 for p, o in zip(prompt, out_len)]  # at its last decode step
        offset, epoch, finish_times = self.offset, self.epoch, self.finish_times
        waiting, heap = self.waiting, self.finish_heap
        phases, offsets = self.phases, self.offsets
        # Decoders in admission order, for picking preemption victims (the most recently
        # admitted). Finished ones are left in place and skipped when popping: no O(n) removal.
        running: list[int] = []
        decoding = [False] * len(prompt)
        bs, usable, watermark_blocks = self.block_size, self.usable, self.watermark_blocks
        max_num_seqs, max_num_batched_tokens = self.max_num_seqs, self.max_num_batched_tokens
        chunked = self.config.chunked_prefill
        iteration_time = self.latency.iteration_time
        decode_run_time = self.latency.decode_run_time
        max_context_kw, recorder = self.max_context_kw, self.recorder
        heappush, heappop = heapq.heappush, heapq.heappop

        total = len(prompt)
        n = sum_offset = sum_a = 0  # the decoders in aggregate (module docstring)
        partial, partial_computed, partial_blocks = -1, 0, 0
        tau, now = 0, 0.0
        num_finished = num_preemptions = num_iterations = 0

        while num_finished < total:
            # The scheduling idea, as vLLM v1 states it: there is no prefill phase and no decode
            # phase. Every request has num_computed_tokens catching up with its num_tokens
            # (prompt plus outputs so far). Each step hands out token_budget =
            # max_num_batched_tokens: first to the running requests in admission order (a
            # decoding request takes 1 token, a partly prefilled one its next chunk), then to
            # waiting requests in FCFS order while fewer than max_num_seqs run and their whole
            # sequence fits the free KV blocks. A running request that cannot get a block
            # preempts the most recently admitted one (recompute: back to the front of the
            # waiting queue with num_computed_tokens = 0); a step that preempted admits nobody.
            # Here, a run of steps in which nothing changes but the decoders' lengths is executed
            # at once; the other steps go request by request, as in vLLM.
            u, v = divmod(tau + bs, bs)
            held_next = sum_a + n * u + n - bisect_left(phases, bs - v)  # held(tau + 1)

            if partial < 0 and n:
                admit = False  # would this step admit the head of the waiting queue?
                if waiting and n < max_num_seqs and n < max_num_batched_tokens:
                    i = waiting[0]
                    num_tokens = prompt[i] + num_output[i]
                    admit = ((chunked or num_tokens <= max_num_batched_tokens - n)
                             and -(-num_tokens // bs) + watermark_blocks <= usable - held_next)
                if not admit:
                    # Pure decode until the next finish or the step whose blocks run short.
                    while heap[0][2] != epoch[heap[0][1]]:
                        heappop(heap)
                    last = heap[0][0]
                    q, m = divmod(usable - sum_a, n)
                    shortage = bs * q - phases[n - 1 - m]  # first step with held(step+1) > usable
                    if shortage <= last:
                        last = shortage - 1
                    if last >= tau:
                        k = last - tau + 1
                        context = sum_offset + n * (tau + 1)
                        longest = offsets[-1] + tau + 1
                        if recorder is not None:
                            now = _record_decode_run(recorder, self.latency, Batch(
                                decode_seqs=n, decode_context=context,
                                decode_max_context=longest), k, now)
                        elif max_context_kw:
                            now += decode_run_time(n, context, k, decode_max_context=longest)
                        else:
                            now += decode_run_time(n, context, k)
                        num_iterations += k
                        tau = last + 1
                        while heap and heap[0][0] <= last:  # requests done at step `last`
                            _, i, ep = heappop(heap)
                            if ep != epoch[i]:
                                continue
                            off = offset[i]
                            n -= 1
                            sum_offset -= off
                            a, p = divmod(off, bs)
                            sum_a -= a
                            del phases[bisect_left(phases, p)]
                            del offsets[bisect_left(offsets, off)]
                            decoding[i] = False
                            finish_times[i] = now
                            num_finished += 1
                        continue

            # ---- one step, request by request (Scheduler.schedule()) --------------------------
            u, v = divmod(tau + bs - 1, bs)
            held_now = sum_a + n * u + n - bisect_left(phases, bs - v)  # held(tau)
            token_budget = max_num_batched_tokens
            free = usable - partial_blocks - held_now
            demand = held_next - held_now  # decoders crossing into a new block this step
            preempted = demand > free
            # vLLM walks the running queue in admission order: each decoder needing a block
            # takes one, and when none is free the most recently admitted request is preempted
            # (the partial prefill first, being last). Victims come from the end and a decoder
            # is never a victim before its turn, so the outcome is the same as: pop victims from
            # the end until the blocks of the remaining needers fit.
            while demand > free:
                num_preemptions += 1
                if partial >= 0:
                    waiting.appendleft(partial)
                    free += partial_blocks
                    partial, partial_computed, partial_blocks = -1, 0, 0
                    continue
                victim = running.pop()
                while not decoding[victim]:
                    victim = running.pop()
                decoding[victim] = False
                off = offset[victim]
                n -= 1
                sum_offset -= off
                a, p = divmod(off, bs)
                sum_a -= a
                del phases[bisect_left(phases, p)]
                del offsets[bisect_left(offsets, off)]
                epoch[victim] += 1
                num_output[victim] = off + tau + 1 - prompt[victim]
                waiting.appendleft(victim)
                free += -(-(off + tau) // bs)
                if p == (-tau) % bs:  # it needed a block this step
                    demand -= 1
            free -= demand
            token_budget -= n

            prefills: list[tuple[int, int, int]] = []  # (request, computed before, new tokens)
            if partial >= 0 and token_budget > 0:
                i = partial
                num_new_tokens = min(prompt[i] + num_output[i] - partial_computed, token_budget)
                needed = -(-(partial_computed + num_new_tokens) // bs) - partial_blocks
                if needed > free:  # the last running request: it preempts itself
                    num_preemptions += 1
                    preempted = True
                    waiting.appendleft(i)
                    free += partial_blocks
                    partial, partial_computed, partial_blocks = -1, 0, 0
                else:
                    free -= needed
                    partial_blocks += needed
                    prefills.append((i, partial_computed, num_new_tokens))
                    token_budget -= num_new_tokens

            if not preempted:
                num_running = n + (partial >= 0)
                while token_budget > 0 and waiting and num_running < max_num_seqs:
                    i = waiting[0]
                    num_tokens = prompt[i] + num_output[i]
                    if -(-num_tokens // bs) + (watermark_blocks if num_running else 0) > free:
                        break
                    if not chunked and num_tokens > token_budget:
                        break
                    num_new_tokens = min(num_tokens, token_budget)
                    waiting.popleft()
                    blocks = -(-num_new_tokens // bs)
                    free -= blocks
                    num_running += 1
                    if num_new_tokens < num_tokens:  # a partial prefill: the last one admitted
                        partial, partial_computed, partial_blocks = i, 0, blocks
                    prefills.append((i, 0, num_new_tokens))
                    token_budget -= num_new_tokens

            if not prefills and not n:
                raise RuntimeError("replay stalled: nothing could be scheduled")
            prefill_seqs = prefill_tokens = 0
            prefill_attention = 0.0
            decode_seqs, decode_context = n, sum_offset + n * (tau + 1)
            longest = offsets[-1] + tau + 1 if n else 0
            for i, num_computed, num_new_tokens in prefills:
                if num_new_tokens == 1 and num_computed == prompt[i] + num_output[i] - 1:
                    decode_seqs += 1  # a one-token chunk completing its sequence: a decode
                    decode_context += num_computed + 1
                    longest = max(longest, num_computed + 1)
                else:
                    prefill_seqs += 1
                    prefill_tokens += num_new_tokens
                    prefill_attention += num_new_tokens * (num_computed + num_new_tokens)
            batch = Batch(prefill_seqs, prefill_tokens, prefill_attention, decode_seqs,
                          decode_context, longest)
            duration = iteration_time(batch)
            if recorder is not None:
                recorder.add(now, duration, batch)
            now += duration
            num_iterations += 1

            while heap and heap[0][0] <= tau:  # decoders done at this step
                _, i, ep = heappop(heap)
                if ep != epoch[i]:
                    continue
                off = offset[i]
                n -= 1
                sum_offset -= off
                a, p = divmod(off, bs)
                sum_a -= a
                del phases[bisect_left(phases, p)]
                del offsets[bisect_left(offsets, off)]
                decoding[i] = False
                finish_times[i] = now
                num_finished += 1
            tau += 1
            for i, num_computed, num_new_tokens in prefills:
                num_computed += num_new_tokens
                if i == partial:
                    if num_computed < prompt[i] + num_output[i]:
                        partial_computed = num_computed
                        continue
                    partial, partial_computed, partial_blocks = -1, 0, 0
                outputs = num_output[i] + 1  # all its tokens computed: it samples one more
                num_output[i] = outputs
                if outputs == out_len[i]:
                    finish_times[i] = now
                    num_finished += 1
                    continue
                off = num_computed - tau  # it decodes from step tau on
                offset[i] = off
                n += 1
                sum_offset += off
                a, p = divmod(off, bs)
                sum_a += a
                insort(phases, p)
                insort(offsets, off)
                heappush(heap, (last_computed[i] - off, i, epoch[i]))
                decoding[i] = True
                running.append(i)

        self.now, self.tau, self.num_iterations = now, tau, num_iterations
        self.num_preemptions, self.num_finished = num_preemptions, num_finished

    # ---- vLLM 0.3.x (v0, padded prefill) ----------------------------------------------------
    def run_v0(self) -> None:
        # The scheduling idea of vLLM 0.3.x: an iteration is either a prefill or a decode. If a
        # waiting request fits (blocks for its whole sequence beyond the watermark, fewer than
        # max_num_seqs running), the step prefills as many waiting requests as fit, FCFS, in
        # one batch padded to the longest (padded tokens <= max_num_batched_tokens, padding <=
        # max_paddings). Otherwise every running request decodes one token, in arrival order;
        # each needs a free block to go on, else the latest arrival is preempted (recompute).
        # Runs of decode steps with no admission possible and no block shortage are executed
        # at once; a step in which the free blocks may reach zero goes request by request.
        total = len(self.prompt)
        while self.num_finished < total:
            if self.can_prefill_v0():
                self.prefill_step_v0()
                continue
            if self.n == 0:
                raise RuntimeError("replay stalled: nothing could be scheduled")
            tau = self.tau
            last = self.next_finish()
            shortage = self.first_exceeding(self.usable - 1)  # free may reach 0 in this step
            if shortage <= last:
                last = shortage - 1
            if last >= tau:
                self.run_decodes(last - tau + 1)
                self.finish_decoders(last)
            else:
                self.decode_step_v0(tau)

    def can_prefill_v0(self) -> bool:
        if not self.waiting or self.n >= self.max_num_seqs:
            return False
        i = self.waiting[0]
        required = -(-(self.prompt[i] + self.num_output[i]) // self.block_size)
        return self.usable - self.held(self.tau) - required >= self.watermark_blocks

    def prefill_step_v0(self) -> None:
        free = self.usable - self.held(self.tau)
        seq_lens: list[int] = []
        admitted: list[int] = []
        num_running = self.n
        max_paddings = self.config.max_paddings
        while self.waiting:
            i = self.waiting[0]
            num_prompt_tokens = self.prompt[i] + self.num_output[i]
            required = -(-num_prompt_tokens // self.block_size)
            if free - required < self.watermark_blocks:
                break
            longest = max(max(seq_lens, default=0), num_prompt_tokens)
            num_batched_tokens = (len(seq_lens) + 1) * longest
            if num_batched_tokens > self.max_num_batched_tokens:
                break
            if num_running + 1 > self.max_num_seqs:
                break
            num_paddings = num_batched_tokens - sum(seq_lens) - num_prompt_tokens
            if max_paddings is not None and num_paddings > max_paddings:
                break
            seq_lens.append(num_prompt_tokens)
            self.waiting.popleft()
            free -= required
            num_running += 1
            admitted.append(i)
        padded, m = max(seq_lens), len(admitted)
        self.execute(Batch(prefill_seqs=m, prefill_tokens=m * padded,
                           prefill_attention=float(m * padded * padded)))
        for i, num_tokens in zip(admitted, seq_lens):
            self.prefilled(i, num_tokens)  # decoders from iteration tau (not advanced)
        self.running.sort()  # v0 keeps running requests in arrival order

    def decode_step_v0(self, tau: int) -> None:
        """A decode step in which free blocks may run out: request by request, arrival order."""
        bs, offset, running = self.block_size, self.offset, self.running
        free = self.usable - self.held(tau)
        j = 0
        while j < len(running):
            i = running[j]
            while free < 1:  # can_append_slot: a free block to go on, else preempt
                victim = running.pop()
                free += self.preempt_decoder(victim, tau)
                if victim == i:
                    break
            if j >= len(running):  # it preempted itself
                break
            if (offset[i] + tau) % bs == 0:
                free -= 1
            j += 1
        if self.n:
            self.execute(self.decode_batch())
            self.tau = tau + 1
            self.finish_decoders(tau)


def _record_decode_run(recorder: IterationRecorder, latency: LatencyModel, first: Batch, k: int,
                       now: float) -> float:
    """Cost and log k decode iterations one by one (when the iteration log is kept)."""
    n = first.decode_seqs
    for j in range(k):
        batch = Batch(decode_seqs=n, decode_context=first.decode_context + j * n,
                      decode_max_context=first.decode_max_context + j)
        duration = latency.iteration_time(batch)
        recorder.add(now, duration, batch)
        now += duration
    return now


def replay(prompts: np.ndarray, outputs: np.ndarray, latency: LatencyModel, config: EngineConfig,
           num_kv_blocks: int, *, record_iterations: bool = False) -> SimResult:
    """Event-driven replay of `config.policy` over validated requests (see simulate())."""
    state = _Replay(prompts, outputs, latency, config, num_kv_blocks, record_iterations)
    if state.prompt:
        if config.policy == "v1":
            state.run_v1()
        else:
            state.run_v0()
    return state.result()
