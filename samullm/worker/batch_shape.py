"""The shape of one engine step, from what the scheduler handed out (pure; no vLLM here).

vLLM v1 has no prefill or decode phase: each scheduled request computes `new_tokens` tokens
after `computed_before` already in its KV cache. We call it decoding when it computes exactly
one token past its prompt, and prefilling otherwise (a prompt, a chunk of one, or a preempted
request recomputing its tokens), which is how costmodel.interface.Batch splits the work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    new_tokens: int
    computed_before: int
    num_prompt_tokens: int

    @property
    def is_decode(self) -> bool:
        return self.new_tokens == 1 and self.computed_before >= self.num_prompt_tokens


@dataclass(frozen=True, slots=True)
class BatchShape:
    prefill_seqs: int = 0
    prefill_tokens: int = 0
    prefill_attention: float = 0.0
    decode_seqs: int = 0
    decode_context: int = 0
    decode_max_context: int = 0
    context_tokens: int = 0  # sum over all scheduled sequences of their length after the step
    max_seq_len: int = 0


def batch_shape(seqs: Iterable[ScheduledSeq]) -> BatchShape:
    prefill_seqs = prefill_tokens = decode_seqs = decode_context = decode_longest = 0
    context = longest = 0
    prefill_attention = 0
    for s in seqs:
        length = s.computed_before + s.new_tokens
        context += length
        longest = max(longest, length)
        if s.is_decode:
            decode_seqs += 1
            decode_context += length
            decode_longest = max(decode_longest, length)
        else:
            prefill_seqs += 1
            prefill_tokens += s.new_tokens
            prefill_attention += s.new_tokens * length
    return BatchShape(
        prefill_seqs=prefill_seqs,
        prefill_tokens=prefill_tokens,
        prefill_attention=float(prefill_attention),
        decode_seqs=decode_seqs,
        decode_context=decode_context,
        decode_max_context=decode_longest,
        context_tokens=context,
        max_seq_len=longest,
    )
