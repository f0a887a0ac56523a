"""The event-driven replay of vLLM's schedulers (the default behind `simulate`).

It obeys the rules of `replay_reference.py` exactly (tests hold the two to the same iterations,
preemptions and finish times), but it does not visit every iteration. Between scheduling events
the batch is the same set of decoding requests, each computing one token per iteration; such a
run of k iterations is costed as one, by `LatencyModel.decode_run_time`. Events are:
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

Costing comes after scheduling. All requests are present at time 0, so no scheduling decision
depends on time: the replay only writes down each event (a single iteration's batch, or a decode
run's sequences, context, length and longest context) and which event each request finished in.
The events are then costed at once: with numpy when the latency model offers `iteration_times`
and `decode_run_times` (`costmodel.interface.BatchLatencyModel`), else with one call per event
(and one per iteration when the iteration log is kept). Either way each event costs exactly what
the per-event call returns, and the finish times are the running sum of the durations, added in
order.
"""

from __future__ import annotations

import heapq
import inspect
from array import array
from bisect import bisect_left, insort
from collections import deque

import numpy as np

from costmodel.engine_config import EngineConfig
from costmodel.interface import Batch, BatchLatencyModel, LatencyModel
from costmodel.simulate import IterationRecorder, SimResult

# Width of one event record (flat lists, `_Replay.steps` and `_Replay.runs`).
STEP_FIELDS = 6  # the Batch fields, in Batch order
RUN_FIELDS = 5  # event index, iterations, decode_seqs, decode_context, decode_max_context


def _takes_max_context(latency: LatencyModel) -> bool:
    """Whether decode_run_time accepts decode_max_context (the longest context at the run's
    start; it grows by one per iteration). Optional in the LatencyModel protocol."""
    try:
        return "decode_max_context" in inspect.signature(latency.decode_run_time).parameters
    except (TypeError, ValueError):
        return False


class _Replay:
    """One engine's state. Request i has prompt[i] tokens and will reach out_len[i] output
    tokens; num_output[i] is how many it had when it was last (re)admitted (v0; run_v1 keeps
    prompt + outputs per request in a list of its own).

    What the replay executed, to be costed once it is over (module docstring):
    steps: a flat list, STEP_FIELDS values per single iteration (its Batch fields, all whole
      numbers: prefill_attention is kept as an int, and made a float when costed);
    runs: a flat list, RUN_FIELDS values per run of pure-decode iterations;
    finish_event[i]: the index (among all events, in order) of the event request i finished in.
    """

    def __init__(self, prompts: np.ndarray, outputs: np.ndarray, latency: LatencyModel,
                 config: EngineConfig, num_kv_blocks: int, record: bool) -> None:
        self.prompts, self.outputs = prompts, outputs
        self.prompt: list[int] = prompts.tolist()
        self.out_len: list[int] = outputs.tolist()
        self.num_output = [0] * len(self.prompt)
        self.latency = latency
        self.config = config
        self.block_size = config.block_size
        self.usable = config.usable_blocks(num_kv_blocks)
        self.watermark_blocks = config.watermark_blocks(num_kv_blocks)
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = int(config.max_num_batched_tokens)

        self.waiting: deque[int] = deque(range(len(self.prompt)))
        self.running: list[int] = []  # v0: decoding requests in arrival order
        self.offset = [0] * len(self.prompt)  # decoder: num_computed_tokens - tau
        self.n = 0
        self.sum_offset = 0
        self.sum_a = 0
        self.phases: list[int] = []  # sorted offset % block_size of the decoders
        self.offsets: list[int] = []  # sorted offsets of the decoders (for the longest one)
        # Decoders by the decode iteration of their last token: a heap of int keys
        # last_tau << shift | request (ints compare faster than tuples). A decoder's key is
        # finish_key[i]; a preempted request's entry stays behind, stale, and is skipped when it
        # surfaces. Under v1 it can never match again: a preempted decoder recomputes its
        # tokens in a later step than the one that preempted it, so it comes back with a
        # smaller offset, and its last token (its key) comes later. (v0 removes the entry.)
        self.shift = max(len(self.prompt), 1).bit_length()
        self.mask = (1 << self.shift) - 1
        # Request i's key if it decoded from offset 0: its last token is computed when
        # num_computed_tokens = prompt + output - 2, in decode iteration that - offset.
        self.last_key: list[int] = (((prompts + outputs - 2) << self.shift)
                                    + np.arange(len(self.prompt))).tolist()
        self.finish_key = [-1] * len(self.prompt)
        self.finish_heap: list[int] = []

        self.tau = 0
        self.num_preemptions = 0
        self.num_finished = 0
        self.steps: list[int] = []
        self.runs: list[int] = []
        self.num_events = 0
        self.finish_event: list[int] = [-1] * len(self.prompt)
        self.record = record

    def result(self) -> SimResult:
        recorder = IterationRecorder() if self.record else None
        ends = _event_end_times(self.latency, self.steps, self.runs, self.num_events, recorder)
        finish_times = ends[_int_array(self.finish_event)] if self.prompt else np.zeros(0)
        return SimResult(total_time=float(ends[-1]) if self.num_events else 0.0,
                         finish_times=finish_times,
                         num_iterations=self.num_iterations(),
                         num_preemptions=self.num_preemptions,
                         iterations=recorder.log() if recorder else None)

    def num_iterations(self) -> int:
        return len(self.steps) // STEP_FIELDS + sum(self.runs[1::RUN_FIELDS])

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
        key = self.last_key[i] - (off << self.shift)
        self.finish_key[i] = key
        heapq.heappush(self.finish_heap, key)

    def drop_decoder(self, i: int) -> None:
        off = self.offset[i]
        self.n -= 1
        self.sum_offset -= off
        a, p = divmod(off, self.block_size)
        self.sum_a -= a
        del self.phases[bisect_left(self.phases, p)]
        del self.offsets[bisect_left(self.offsets, off)]

    def decoders(self) -> tuple[int, int, int]:
        """(decode_seqs, decode_context, decode_max_context) of decode iteration self.tau."""
        tau = self.tau
        return (self.n, self.sum_offset + self.n * (tau + 1),
                self.offsets[-1] + tau + 1 if self.n else 0)

    def next_finish(self) -> int:
        heap, finish_key, mask = self.finish_heap, self.finish_key, self.mask
        while heap[0] != finish_key[heap[0] & mask]:
            heapq.heappop(heap)
        return heap[0] >> self.shift

    def finish_decoders(self, tau: int) -> None:
        """Decoders whose last token was sampled by decode iteration tau (just executed)."""
        heap, finish_key, mask = self.finish_heap, self.finish_key, self.mask
        end = (tau + 1) << self.shift
        while heap and heap[0] < end:
            key = heapq.heappop(heap)
            i = key & mask
            if key == finish_key[i]:
                self.drop_decoder(i)
                self.running.remove(i)
                self.finish_event[i] = self.num_events - 1
                self.num_finished += 1

    def preempt_decoder(self, i: int, tau: int) -> int:
        """Recompute preemption of decoder i before iteration tau (the caller took it out of
        `running`); returns the blocks it frees."""
        num_computed = self.offset[i] + tau
        self.drop_decoder(i)
        # Under v0 a preempted request may come back with a key it had before (prefills do not
        # advance tau), so its entry is taken out now rather than left stale (O(n), but
        # preemptions are rare).
        self.finish_heap.remove(self.finish_key[i])
        heapq.heapify(self.finish_heap)
        self.finish_key[i] = -1
        self.num_output[i] = num_computed + 1 - self.prompt[i]
        self.waiting.appendleft(i)
        self.num_preemptions += 1
        return -(-num_computed // self.block_size)

    def prefilled(self, i: int, num_computed_tokens: int) -> None:
        """Request i computed all its tokens and sampled one more: done, or a decoder."""
        outputs = self.num_output[i] + 1
        self.num_output[i] = outputs
        if outputs == self.out_len[i]:
            self.finish_event[i] = self.num_events - 1
            self.num_finished += 1
        else:
            self.add_decoder(i, num_computed_tokens)
            self.running.append(i)

    def execute(self, prefill_seqs: int, prefill_tokens: int, prefill_attention: int,
                decode_seqs: int, decode_context: int, decode_max_context: int) -> None:
        """One iteration of this batch (the Batch fields, all ints)."""
        self.steps += (prefill_seqs, prefill_tokens, prefill_attention, decode_seqs,
                       decode_context, decode_max_context)
        self.num_events += 1

    def run_decodes(self, k: int) -> None:
        """Execute k pure-decode iterations of the current decoders."""
        self.runs += (self.num_events, k, *self.decoders())
        self.num_events += 1
        self.tau += k

    # ---- vLLM v1 ----------------------------------------------------------------------------
    def run_v1(self) -> None:
        """The v1 replay: one loop with its state in local variables, as it is the hot path
        (the helper methods above do the same bookkeeping for the v0 replay)."""
        # Per request: its tokens (prompt and outputs so far: num_output is not kept here),
        # the KV blocks they fill (what admission asks for), its tokens when it is done.
        tokens = list(self.prompt)
        need = (-(-self.prompts // self.block_size)).tolist()
        final_tokens = (self.prompts + self.outputs).tolist()
        offset, finish_event = self.offset, self.finish_event
        waiting, heap = self.waiting, self.finish_heap
        last_key, finish_key, shift, mask = self.last_key, self.finish_key, self.shift, self.mask
        phases, offsets = self.phases, self.offsets
        steps, runs = self.steps, self.runs
        # Decoders in admission order, for picking preemption victims (the most recently
        # admitted). Finished ones are left in place and skipped when popping (their
        # finish_event is set; a preempted one was popped): no O(n) removal.
        running: list[int] = []
        bs, usable, watermark_blocks = self.block_size, self.usable, self.watermark_blocks
        max_num_seqs, max_num_batched_tokens = self.max_num_seqs, self.max_num_batched_tokens
        admit_limit = min(max_num_seqs, max_num_batched_tokens)  # n below it: room for one more
        chunked = self.config.chunked_prefill
        heappush, heappop = heapq.heappush, heapq.heappop

        total = len(tokens)
        n = sum_offset = sum_a = 0  # the decoders in aggregate (module docstring)
        partial, partial_computed, partial_blocks = -1, 0, 0
        tau = event = 0  # event: the index of the next event
        short = False  # the last decode run stopped where the blocks run short
        num_finished = num_preemptions = 0

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
            held_next = -1  # held(tau + 1), once known
            if partial < 0 and n and not short:
                if waiting and n < admit_limit:  # would this step admit the head of the queue?
                    i = waiting[0]
                    u = (tau + bs) // bs
                    needed = need[i] + watermark_blocks
                    # held(tau + 1) is sum_a + n * u plus at most n: often that settles it.
                    admit = (needed <= usable - sum_a - n * u
                             and (chunked or tokens[i] <= max_num_batched_tokens - n))
                    if admit:
                        held_next = sum_a + n * u + n - bisect_left(phases, bs * u - tau)
                        admit = needed <= usable - held_next
                else:
                    admit = False
                if not admit:
                    # Pure decode until the next finish or the step whose blocks run short.
                    key = heap[0]
                    while key != finish_key[key & mask]:
                        heappop(heap)
                        key = heap[0]
                    last = key >> shift
                    q = (usable - sum_a) // n
                    shortage = bs * q - phases[n - 1 - (usable - sum_a - q * n)]
                    # (shortage: the first step with held(step + 1) > usable)
                    short = shortage <= last
                    if short:
                        last = shortage - 1
                    if last >= tau:
                        k = last - tau + 1
                        runs += (event, k, n, sum_offset + n * (tau + 1), offsets[-1] + tau + 1)
                        tau = last + 1
                        # Requests done at step `last` (none when the run stopped short of
                        # blocks: the next step, the one short of blocks, comes right away).
                        end = tau << shift
                        while heap and heap[0] < end:
                            key = heappop(heap)
                            i = key & mask
                            if key != finish_key[i]:
                                continue
                            off = offset[i]
                            n -= 1
                            sum_offset -= off
                            a = off // bs
                            sum_a -= a
                            del phases[bisect_left(phases, off - a * bs)]
                            del offsets[bisect_left(offsets, off)]
                            finish_event[i] = event
                            num_finished += 1
                        event += 1
                        continue

            # ---- one step, request by request (Scheduler.schedule()) --------------------------
            short = False
            # held(tau) = sum_a + n * u + #{p >= bs - v} with tau + bs - 1 = bs * u + v, so
            # bs - v = bs * u - tau + 1; held(tau + 1) likewise. demand: the decoders crossing
            # into a new block this step.
            u = (tau + bs - 1) // bs
            held_now = sum_a + n * u + n - bisect_left(phases, bs * u - tau + 1)
            if held_next < 0:
                u = (tau + bs) // bs
                held_next = sum_a + n * u + n - bisect_left(phases, bs * u - tau)
            demand = held_next - held_now
            free = usable - partial_blocks - held_now
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
                while finish_event[victim] >= 0:
                    victim = running.pop()
                off = offset[victim]
                n -= 1
                sum_offset -= off
                a = off // bs
                p = off - a * bs
                sum_a -= a
                del phases[bisect_left(phases, p)]
                del offsets[bisect_left(offsets, off)]
                finish_key[victim] = -1
                num_tokens = off + tau + 1  # it recomputes them all: a prompt
                tokens[victim] = num_tokens
                need[victim] = -(-num_tokens // bs)
                waiting.appendleft(victim)
                free += -(-(off + tau) // bs)
                if p == (-tau) % bs:  # it needed a block this step
                    demand -= 1
            free -= demand
            token_budget = max_num_batched_tokens - n

            # The batch: the decoders, then the prefill chunks as they are scheduled (a
            # one-token chunk completing its sequence counts as a decode).
            decode_seqs, decode_context = n, sum_offset + n * (tau + 1)
            longest = offsets[-1] + tau + 1 if n else 0
            prefill_seqs = prefill_tokens = prefill_attention = 0
            prefills: list[tuple[int, int]] = []  # (request, computed tokens after this step)
            if partial >= 0 and token_budget > 0:
                i = partial
                num_tokens = tokens[i]
                num_new_tokens = min(num_tokens - partial_computed, token_budget)
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
                    computed = partial_computed + num_new_tokens
                    prefills.append((i, computed))
                    token_budget -= num_new_tokens
                    if num_new_tokens == 1 and computed == num_tokens:
                        decode_seqs += 1
                        decode_context += computed
                        if computed > longest:
                            longest = computed
                    else:
                        prefill_seqs += 1
                        prefill_tokens += num_new_tokens
                        prefill_attention += num_new_tokens * computed

            if not preempted:
                num_running = n + (partial >= 0)
                while token_budget > 0 and waiting and num_running < max_num_seqs:
                    i = waiting[0]
                    blocks = need[i]
                    if blocks + (watermark_blocks if num_running else 0) > free:
                        break
                    num_tokens = tokens[i]
                    if num_tokens > token_budget:
                        if not chunked:
                            break
                        # A partial prefill: the last one admitted.
                        num_new_tokens = token_budget
                        blocks = -(-num_new_tokens // bs)
                        partial, partial_computed, partial_blocks = i, 0, blocks
                    else:
                        num_new_tokens = num_tokens
                    waiting.popleft()
                    free -= blocks
                    num_running += 1
                    prefills.append((i, num_new_tokens))
                    token_budget -= num_new_tokens
                    if num_tokens == 1:
                        decode_seqs += 1
                        decode_context += 1
                        if longest < 1:
                            longest = 1
                    else:
                        prefill_seqs += 1
                        prefill_tokens += num_new_tokens
                        prefill_attention += num_new_tokens * num_new_tokens

            if not prefills and not n:
                raise RuntimeError("replay stalled: nothing could be scheduled")
            steps += (prefill_seqs, prefill_tokens, prefill_attention, decode_seqs,
                      decode_context, longest)

            end = (tau + 1) << shift
            while heap and heap[0] < end:  # decoders done at this step
                key = heappop(heap)
                i = key & mask
                if key != finish_key[i]:
                    continue
                off = offset[i]
                n -= 1
                sum_offset -= off
                a = off // bs
                sum_a -= a
                del phases[bisect_left(phases, off - a * bs)]
                del offsets[bisect_left(offsets, off)]
                finish_event[i] = event
                num_finished += 1
            tau += 1
            for i, num_computed in prefills:
                if i == partial:
                    if num_computed < tokens[i]:
                        partial_computed = num_computed
                        continue
                    partial, partial_computed, partial_blocks = -1, 0, 0
                num_tokens = tokens[i] + 1  # all its tokens computed: it samples one more
                tokens[i] = num_tokens
                if num_tokens == final_tokens[i]:
                    finish_event[i] = event
                    num_finished += 1
                    continue
                off = num_computed - tau  # it decodes from step tau on
                offset[i] = off
                n += 1
                sum_offset += off
                a = off // bs
                sum_a += a
                insort(phases, off - a * bs)
                insort(offsets, off)
                key = last_key[i] - (off << shift)
                finish_key[i] = key
                heappush(heap, key)
                running.append(i)
            event += 1

        self.tau, self.num_events = tau, event
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
        self.execute(m, m * padded, m * padded * padded, 0, 0, 0)
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
            self.execute(0, 0, 0, *self.decoders())
            self.tau = tau + 1
            self.finish_decoders(tau)


def _event_end_times(latency: LatencyModel, steps: list, runs: list, num_events: int,
                     recorder: IterationRecorder | None) -> np.ndarray:
    """The time at the end of each event (see `_Replay`), from the start of the replay."""
    if recorder is None and isinstance(latency, BatchLatencyModel):
        step_rows = _int_array(steps).reshape(-1, STEP_FIELDS).astype(float)
        run_rows = _int_array(runs).reshape(-1, RUN_FIELDS)
        run_events = run_rows[:, 0]
        run_rows = run_rows.astype(float)
        is_step = np.ones(num_events, dtype=bool)
        is_step[run_events] = False
        durations = np.empty(num_events)
        durations[run_events] = latency.decode_run_times(
            run_rows[:, 2], run_rows[:, 3], run_rows[:, 1], run_rows[:, 4])
        durations[is_step] = latency.iteration_times(*step_rows.T)
        return np.cumsum(durations)  # a running sum, added in order like the loop below
    return _event_end_times_one_by_one(latency, steps, runs, num_events, recorder)


def _int_array(values: list[int]) -> np.ndarray:
    """A list of Python ints as an int64 array (array.array converts them fastest)."""
    ints = array("q")
    ints.fromlist(values)
    return np.frombuffer(ints, dtype=np.int64)


def _event_end_times_one_by_one(latency: LatencyModel, steps: list, runs: list, num_events: int,
                                recorder: IterationRecorder | None) -> np.ndarray:
    """`_event_end_times` with one latency call per event (any `LatencyModel`), or one per
    iteration while keeping the iteration log."""
    iteration_time, decode_run_time = latency.iteration_time, latency.decode_run_time
    max_context_kw = _takes_max_context(latency)
    ends = np.empty(num_events)
    now = 0.0
    step = run = 0  # where the next step and the next run are in their lists
    next_run = runs[0] if runs else num_events
    for event in range(num_events):
        if event == next_run:
            k, n, context, longest = runs[run + 1:run + RUN_FIELDS]
            run += RUN_FIELDS
            next_run = runs[run] if run < len(runs) else num_events
            if recorder is not None:
                now = _record_decode_run(recorder, latency, Batch(
                    decode_seqs=n, decode_context=context, decode_max_context=longest), k, now)
            elif max_context_kw:
                now += decode_run_time(n, context, k, decode_max_context=longest)
            else:
                now += decode_run_time(n, context, k)
        else:
            prefill_seqs, prefill_tokens, pairs, decode_seqs, context, longest = \
                steps[step:step + STEP_FIELDS]
            step += STEP_FIELDS
            batch = Batch(prefill_seqs, prefill_tokens, float(pairs), decode_seqs, context, longest)
            duration = iteration_time(batch)
            if recorder is not None:
                recorder.add(now, duration, batch)
            now += duration
        ends[event] = now
    return ends


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
