"""Seconds per engine iteration: one additive functional form, three ways to fill it in.

The form (per model, TP degree and device), for a `Batch` of n = prefill_tokens + decode_seqs
tokens:

    t = G(n)                                     linear layers, launch and sampling overhead
      + s_p * prefill_seqs                       per prompt: padding, logits row, sampling
      + A_p * prefill_attention                  prefill attention, per query-key pair
      + A_d(decode_seqs) * decode_context        decode attention: KV bytes read
      + B(decode_seqs) * max(0, decode_max_context - decode_context / decode_seqs)

G is the prefill curve G_p when the batch computes any prompt token, else the decode curve G_d
(the A100 data's engine ran decode batches through a leaner path, CUDA graphs, and the
linear layers' time depends only on the token count). G, A_d and B are piecewise-linear
curves (costmodel/curves.py); A_p is stored as a constant curve. The last term is the wait for the longest sequence in a
paged-attention kernel that gives each sequence one thread block (vLLM <= 0.3 chose that kernel
unless num_seqs * heads <= 512 and the longest context spans several 512-token partitions; the
split kernel gets its own curve B_split); it is zero when the longest context is not known.

Mixed batches (vLLM v1 chunked prefill: a prompt chunk riding with decodes) are costed from the
parts measured apart by the same sum: the linear layers once, on the prefill curve, for all the
batch's tokens; both attention parts added; one per-iteration overhead (inside G).

The three ways (each produces an `AdditiveLatencyModel`):
  - fitted from a profile's rows (costmodel/latency_fit.py),
  - interpolated from measured rows, the "truth" of planner benchmarks
    (latency_library.measured_latency_model),
  - predicted from a model's config and a device's specs (the engine's physics:
    latency_physics.py) with efficiency factors learned on profiled models (latency_predict.py).
`latency_model_for` (costmodel/latency_library.py) picks the best available for (model, TP,
device). Both protocol methods cost a few microseconds: curves are tables indexed by integer.
`iteration_times` and `decode_run_times` give the same numbers, to the last bit, for arrays of
batches (numpy): the replay costs all its events with one call of each.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from costmodel.curves import Curve
from costmodel.errors import UserInputError
from costmodel.interface import Batch

FORMAT = "samullm-latency/1"
# vLLM <= 0.3 paged attention: the split ("v2") kernel's partition and its choice rule.
PARTITION_TOKENS = 512
SPLIT_MAX_SEQ_HEADS = 512
SPLIT_ALWAYS_ABOVE = 8192
# Longest contexts at which the kernel choice may flip, as the longest sequence grows.
_KERNEL_BOUNDARIES = (PARTITION_TOKENS + 1, SPLIT_ALWAYS_ABOVE + 1)


@dataclass(frozen=True)
class AdditiveLatencyModel:
    """The additive form above with its curves filled in; implements `LatencyModel`."""

    model: str
    tp: int
    device: str
    kind: str  # "fitted" | "measured" | "predicted"
    prefill_linear: Curve
    decode_linear: Curve
    prefill_per_seq: float
    prefill_attention: Curve
    decode_attention: Curve
    straggler: Curve
    straggler_split: Curve
    heads_per_device: int
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    # ---- the LatencyModel protocol ----------------------------------------------------------
    def scaled(self, factor: float) -> "AdditiveLatencyModel":
        """The same model with every iteration `factor` times as long."""
        def times(curve: Curve) -> Curve:
            return Curve(curve.x, tuple(v * factor for v in curve.y), curve.extrapolate)

        return dataclasses.replace(
            self, prefill_per_seq=self.prefill_per_seq * factor,
            **{name: times(getattr(self, name)) for name in
               ("prefill_linear", "decode_linear", "prefill_attention", "decode_attention", "straggler",
                "straggler_split")},
            info=dict(self.info))

    def iteration_time(self, batch: Batch) -> float:
        prefill_tokens = batch.prefill_tokens
        decode_seqs = batch.decode_seqs
        n = prefill_tokens + decode_seqs
        if n <= 0:
            return 0.0
        if decode_seqs > 0:
            linear, attention, straggler, straggler_split = self._decode_terms(decode_seqs)
        if prefill_tokens > 0:
            t = self.prefill_linear(n) + self.prefill_per_seq * batch.prefill_seqs
            pairs = batch.prefill_attention
            if pairs > 0:
                t += self.prefill_attention(pairs / prefill_tokens) * pairs
        else:
            t = linear
        if decode_seqs > 0:
            context = batch.decode_context
            t += attention * context
            longest = batch.decode_max_context
            if longest:
                excess = longest - context / decode_seqs
                if excess > 0:
                    split = self._uses_split_kernel(decode_seqs, longest)
                    t += (straggler_split if split else straggler) * excess
        return t

    def decode_run_time(self, decode_seqs: int, decode_context: int, num_iterations: int,
                        decode_max_context: int = 0) -> float:
        """Closed form: every context grows by one token per iteration, so the total context
        grows by `decode_seqs` and the longest sequence's excess over the mean stays fixed."""
        k = num_iterations
        if k <= 0 or decode_seqs <= 0:
            return 0.0
        s = decode_seqs
        linear, attention, straggler, straggler_split = self._decode_terms(s)
        total = k * linear
        total += attention * (k * decode_context + s * k * (k - 1) / 2.0)
        if decode_max_context:
            excess = decode_max_context - decode_context / s
            if excess > 0 and (straggler or straggler_split):
                start, end = decode_max_context, decode_max_context + k
                low, high = _KERNEL_BOUNDARIES
                if (start >= low or end <= low) and (start >= high or end <= high):  # one kernel
                    split = self._uses_split_kernel(s, start)
                    total += k * (straggler_split if split else straggler) * excess
                else:
                    for longest, count in self._kernel_segments(s, decode_max_context, k):
                        split = self._uses_split_kernel(s, longest)
                        total += count * (straggler_split if split else straggler) * excess
        return total

    # ---- many iterations at once (numpy: the replay costs all its events in one go) -------
    def iteration_times(self, prefill_seqs, prefill_tokens, prefill_attention, decode_seqs,
                        decode_context, decode_max_context) -> np.ndarray:
        """`iteration_time` of many batches, given as arrays of the `Batch` fields: equal to it
        batch by batch, to the last bit (the same table lookups and the same operations in the
        same order; every count must be below 2**53)."""
        prefill_seqs, prefill_tokens, pairs, decode_seqs, context, longest = (
            np.asarray(values, dtype=float) for values in (
                prefill_seqs, prefill_tokens, prefill_attention, decode_seqs, decode_context,
                decode_max_context))
        n = prefill_tokens + decode_seqs
        prefilling, decoding = prefill_tokens > 0, decode_seqs > 0
        linear, attention, straggler, straggler_split = self._decode_terms_many(decode_seqs)

        prefill = self.prefill_linear.evaluate(n) + self.prefill_per_seq * prefill_seqs
        with_pairs = prefilling & (pairs > 0)
        if with_pairs.any():
            pairs_per_token = pairs / np.where(prefilling, prefill_tokens, 1.0)
            prefill = np.where(with_pairs, prefill
                               + self.prefill_attention.evaluate(pairs_per_token) * pairs, prefill)
        t = np.where(prefilling, prefill, linear)

        seqs = np.where(decoding, decode_seqs, 1.0)
        t = np.where(decoding, t + attention * context, t)
        excess = longest - context / seqs
        waits = decoding & (longest != 0) & (excess > 0)
        split = self._uses_split_kernel_many(decode_seqs, longest)
        t = np.where(waits, t + np.where(split, straggler_split, straggler) * excess, t)
        return np.where(n > 0, t, 0.0)

    def decode_run_times(self, decode_seqs, decode_context, num_iterations,
                         decode_max_context) -> np.ndarray:
        """`decode_run_time` of many runs, given as arrays of its arguments: equal to it run
        by run, to the last bit (the kernel segments of a run are added one by one, in order;
        an absent segment adds an exact zero)."""
        s, context, k, longest = (np.asarray(values, dtype=float) for values in (
            decode_seqs, decode_context, num_iterations, decode_max_context))
        linear, attention, straggler, straggler_split = self._decode_terms_many(s)
        total = k * linear
        total = total + attention * (k * context + s * k * (k - 1) / 2.0)

        excess = longest - context / np.where(s > 0, s, 1.0)
        waits = (longest != 0) & (excess > 0)
        if waits.any():
            # Iterations whose longest context lies below 513, in 513..8192, above 8192: the
            # kernel choice is the same within each (see _uses_split_kernel).
            low, high = _KERNEL_BOUNDARIES
            start, end = longest, longest + k
            counts = (np.maximum(np.minimum(end, low) - start, 0.0),
                      np.maximum(np.minimum(end, high) - np.maximum(start, low), 0.0),
                      np.maximum(end - np.maximum(start, high), 0.0))
            heads = self.heads_per_device
            few_heads = (s * heads <= SPLIT_MAX_SEQ_HEADS) if heads else np.zeros(s.shape, bool)
            per_token = (straggler, np.where(few_heads, straggler_split, straggler),
                         straggler_split if heads else straggler)
            for count, cost in zip(counts, per_token):
                total = np.where(waits, total + count * cost * excess, total)
        return np.where((k > 0) & (s > 0), total, 0.0)

    def _decode_terms_many(self, decode_seqs: np.ndarray) -> tuple[np.ndarray, ...]:
        """(G_d, A_d, B, B_split) at each of `decode_seqs`."""
        return (self.decode_linear.evaluate(decode_seqs),
                self.decode_attention.evaluate(decode_seqs),
                self.straggler.evaluate(decode_seqs), self.straggler_split.evaluate(decode_seqs))

    def _uses_split_kernel_many(self, decode_seqs: np.ndarray, longest: np.ndarray) -> np.ndarray:
        if not self.heads_per_device:
            return np.zeros(np.shape(longest), dtype=bool)
        return (longest > SPLIT_ALWAYS_ABOVE) | (
            (longest > PARTITION_TOKENS)
            & (decode_seqs * self.heads_per_device <= SPLIT_MAX_SEQ_HEADS))

    def _decode_terms(self, decode_seqs: int) -> tuple[float, float, float, float]:
        """(G_d, A_d, B, B_split) at `decode_seqs`: memoised, as the simulator asks for the
        same few hundred batch sizes millions of times."""
        terms = self._decode_memo.get(decode_seqs)
        if terms is None:
            terms = (self.decode_linear(decode_seqs), self.decode_attention(decode_seqs),
                     self.straggler(decode_seqs), self.straggler_split(decode_seqs))
            self._decode_memo[decode_seqs] = terms
        return terms

    @cached_property
    def _decode_memo(self) -> dict[int, tuple[float, float, float, float]]:
        return {}

    # ---- helpers ----------------------------------------------------------------------------
    def _uses_split_kernel(self, decode_seqs: int, longest: int) -> bool:
        if not self.heads_per_device:
            return False
        if longest > SPLIT_ALWAYS_ABOVE:
            return True
        return longest > PARTITION_TOKENS and decode_seqs * self.heads_per_device <= SPLIT_MAX_SEQ_HEADS

    def _kernel_segments(self, decode_seqs: int, longest: int, k: int):
        """(longest context at the segment's start, iterations) over which the kernel choice is
        constant, as the longest context grows by one per iteration."""
        start = longest
        end = longest + k
        for boundary in _KERNEL_BOUNDARIES:
            if start < boundary < end:
                yield start, boundary - start
                start = boundary
        yield start, end - start

    # ---- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model, "tp": self.tp, "device": self.device,
            "kind": self.kind, "source": self.source,
            "heads_per_device": self.heads_per_device,
            "prefill_per_seq": float(f"{self.prefill_per_seq:.6g}"),
            "curves": {name: getattr(self, name).to_dict() for name in _CURVES},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdditiveLatencyModel":
        if data.get("format") != FORMAT:
            raise UserInputError(
                f"latency model data has format {data.get('format')!r}, expected {FORMAT!r}")
        try:
            curves = {name: Curve.from_dict(data["curves"][name]) for name in _CURVES}
            return cls(model=data["model"], tp=int(data["tp"]), device=data["device"],
                       kind=data["kind"], prefill_per_seq=float(data["prefill_per_seq"]),
                       heads_per_device=int(data["heads_per_device"]),
                       source=data.get("source", ""), info=data.get("info", {}), **curves)
        except KeyError as err:
            raise UserInputError(f"latency model data lacks {err}") from err

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AdditiveLatencyModel":
        return cls.from_dict(_read_json(path))


_CURVES = ("prefill_linear", "decode_linear", "prefill_attention", "decode_attention",
           "straggler", "straggler_split")


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"cannot read latency model file {str(path)!r}: {err}") from err


def latency_model_for(spec, tp: int, device, fitted=None) -> AdditiveLatencyModel:
    """The best available latency model for (model, TP, device); see
    costmodel.latency_library.latency_model_for."""
    from costmodel.latency_library import latency_model_for as choose

    return choose(spec, tp, device, fitted)
