"""What the simulator asks of a latency model, as plain data and one protocol.

The simulator (`simulate.py`) describes each engine iteration as a `Batch`; any latency model
(`latency.py`: fitted, interpolated from measured rows, or predicted from a config) answers
with seconds. Both sides import only this file from each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(slots=True)
class Batch:
    """The work of one engine iteration, reduced to what its time depends on.

    Plain mutable data (not frozen, so not hashable): the simulator builds one per simulated
    iteration, and a frozen dataclass costs four times as long to construct. Treat a Batch
    handed to a latency model as read-only.

    prefill_seqs / prefill_tokens: sequences computing prompt tokens this iteration and how many
      tokens they compute in all (a chunk each under chunked prefill; padded length times
      sequences under the old padded policy).
    prefill_attention: sum over those sequences of new_tokens * (computed_before + new_tokens),
      the query-key pairs their attention touches (causal halving is the model's business).
    decode_seqs / decode_context: sequences generating one token each, and the sum of their
      context lengths (KV tokens read).
    decode_max_context: the longest of those contexts, when known (0 = unknown, taken as the
      mean). Some attention kernels wait on the longest sequence; models may ignore it.
    """

    prefill_seqs: int = 0
    prefill_tokens: int = 0
    prefill_attention: float = 0.0
    decode_seqs: int = 0
    decode_context: int = 0
    decode_max_context: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


@runtime_checkable
class LatencyModel(Protocol):
    """Seconds per engine iteration for one (model, TP degree, device)."""

    def iteration_time(self, batch: Batch) -> float:
        """Wall time of one iteration computing `batch`."""
        ...

    def decode_run_time(self, decode_seqs: int, decode_context: int, num_iterations: int,
                        decode_max_context: int = 0) -> float:
        """Sum of `num_iterations` pure-decode iterations of `decode_seqs` sequences whose
        context starts at `decode_context` tokens and grows by `decode_seqs` each iteration;
        `decode_max_context` is the longest of those contexts at the first iteration (growing
        by one per iteration; 0 = unknown), as in `Batch`. Models should answer in closed
        form: the simulator calls this on its hot path."""
        ...


@runtime_checkable
class BatchLatencyModel(Protocol):
    """Optional: a latency model that also costs many iterations at once (numpy arrays in, an
    array of seconds out). The replay uses these when a model has them; each element must equal
    what the per-iteration method returns for it (the replay's results may not depend on which
    path it took)."""

    def iteration_times(self, prefill_seqs, prefill_tokens, prefill_attention, decode_seqs,
                        decode_context, decode_max_context):
        """`iteration_time` of each batch, given as arrays of the `Batch` fields."""
        ...

    def decode_run_times(self, decode_seqs, decode_context, num_iterations, decode_max_context):
        """`decode_run_time` of each run, given as arrays of its arguments."""
        ...
