"""Fit the additive latency form (costmodel/latency.py) to one profile's measured iterations.

Every curve of the form is piecewise linear, so the predicted time is linear in the knot values
and the fit is one penalised least-squares problem (costmodel/spline_ls.py) on relative error,
sum(((pred - t) / t)^2), plus a penalty on each curve's changes of slope.

Choices, from the A100 data:
  - The linear-layer curves G_p, G_d have a knot at every token count the data has (up to
    1024; every 16 tokens beyond), and straight segments across gaps: the measured times step
    at multiples of 128 tokens (GEMM tiles; a 4097-token batch is 7% slower than a 4096-token
    one) and carry an 8-token sawtooth (CUDA-graph batch padding). Steps are allowed at
    multiples of 64 next to data and cost a little, so only steps the data shows survive.
  - Prefill attention has one coefficient per query-key pair. A curve over pairs per token
    would trade against G (pairs = tokens * length) and absorb the linear layers' cost.
  - Decode attention per context token and the longest-sequence wait are curves over the
    number of decode sequences (half powers of two), free to step where the A100 engine's
    paged-attention kernel choice flips.
  - G_p and G_d are made non-decreasing afterwards (more tokens are never faster; costs 0.1% of
    median error) and continue beyond the data along their upper-half secant.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import numpy as np

from costmodel.curves import Curve
from costmodel.errors import UserInputError
from costmodel.hardware import DeviceSpec
from costmodel.latency import (AdditiveLatencyModel, PARTITION_TOKENS, SPLIT_ALWAYS_ABOVE,
                               SPLIT_MAX_SEQ_HEADS)
from costmodel.models import ModelSpec
from costmodel.profiles import ProfileRows
from costmodel.spline_ls import (Block, SplineDesign, break_at, isotonic_increasing, log_knots,
                                 token_knots, with_secant_tail)


@dataclass(frozen=True)
class FitOptions:
    """Penalty weights (dimensionless: relative error against slope changes of curves scaled
    to the typical iteration time)."""

    linear_smoothing: float = 10
    step_penalty: float = 0.1
    attention_smoothing: float = 3.0
    monotone: bool = True
    # The wait for a batch's longest sequence (latency.py's last term) belongs to the early-2024
    # engine behind the A100 data. vLLM v1's attention has none, and profiles of it cannot
    # identify the term (their decode waves have equal lengths): left free it comes out wildly
    # wrong, so such profiles are fitted without it (zero curves).
    longest_sequence_wait: bool = True
    # A fit of relative errors does not keep the sum: the fitted model's total over the profile
    # can be off by several percent even where single iterations are unbiased. A run's time is a
    # sum of iterations, so optionally rescale the fit to the profile's measured total.
    preserve_total: bool = False


def fit_options_for(engine: str) -> FitOptions:
    """How to fit profiles of an engine: "v0_padded" (the A100 data's, with its wait for the
    longest sequence) or "v1" (vLLM v1: no such wait, and the fit keeps the profile's total)."""
    if engine == "v0_padded":
        return FitOptions()
    if engine == "v1":
        return FitOptions(longest_sequence_wait=False, preserve_total=True)
    raise UserInputError(f"unknown engine {engine!r}: v0_padded or v1")


def without_longest_context(rows: ProfileRows) -> ProfileRows:
    """The rows with no longest-context information: what learning factors from v1 profiles
    needs (their decode waves cannot show a wait for the longest sequence)."""
    return dataclasses.replace(rows, decode_max_context=np.zeros_like(rows.decode_max_context))


def record_fit_errors(model: AdditiveLatencyModel, rows: ProfileRows) -> np.ndarray:
    """The model's relative error on each of the rows it was fitted on; median, p90 and the
    error of the total go to `model.info`."""
    predicted = np.array([model.iteration_time(rows.batch(i)) for i in range(len(rows))])
    error = np.abs(predicted / rows.seconds - 1)
    model.info.update({
        "train_median_error": round(float(np.median(error)), 5),
        "train_p90_error": round(float(np.percentile(error, 90)), 5),
        "train_total_error": round(float(predicted.sum() / rows.seconds.sum() - 1), 5),
    })
    return error


def split_kernel_mask(decode_seqs, longest, heads_per_device: int) -> np.ndarray:
    """Where vLLM <= 0.3 used its split ("v2") paged-attention kernel (see latency.py)."""
    decode_seqs = np.asarray(decode_seqs, dtype=float)
    longest = np.asarray(longest, dtype=float)
    return (longest > SPLIT_ALWAYS_ABOVE) | (
        (longest > PARTITION_TOKENS) & (decode_seqs * heads_per_device <= SPLIT_MAX_SEQ_HEADS))


def straggler_excess(rows: ProfileRows) -> np.ndarray:
    """How far each row's longest decode context exceeds the mean one (0 when unknown)."""
    seqs = np.maximum(rows.decode_seqs, 1)
    excess = rows.decode_max_context - rows.decode_context / seqs
    return np.where((rows.decode_max_context > 0) & (rows.decode_seqs > 0), np.maximum(excess, 0), 0.0)


def fit_latency_model(rows: ProfileRows, spec: ModelSpec, device: DeviceSpec | str,
                      options: FitOptions = FitOptions()) -> AdditiveLatencyModel:
    """Fit the additive form to `rows` (one model at one TP degree on one device)."""
    if len(rows) < 8:
        raise UserInputError(f"profile {rows.source!r} has {len(rows)} rows; at least 8 are needed")
    device_name = device if isinstance(device, str) else device.name
    heads = spec.heads_per_device(rows.tp)
    t = rows.seconds
    n = rows.prefill_tokens + rows.decode_seqs
    pre = np.flatnonzero(rows.prefill_tokens > 0)
    dec_only = np.flatnonzero(rows.prefill_tokens <= 0)
    dec = np.flatnonzero(rows.decode_seqs > 0)
    typical = float(np.median(t))

    def scale_for(values: np.ndarray) -> float:
        """Knot values in units that make their term comparable to a typical time."""
        positive = values[values > 0]
        return typical / float(np.median(positive)) if len(positive) else typical

    design = SplineDesign(len(rows))
    for name, index in (("prefill_linear", pre), ("decode_linear", dec_only)):
        knots, breaks = token_knots(n[index] if len(index) else [1.0])
        design.add_block(Block(name, knots, typical, "linear", options.linear_smoothing, False,
                               breaks, options.step_penalty))
        design.add_term(name, index, n[index], 1.0)

    design.add_block(Block("prefill_per_seq", [1.0], scale_for(rows.prefill_seqs)))
    design.add_term("prefill_per_seq", pre, 1.0, rows.prefill_seqs[pre])
    design.add_block(Block("prefill_attention", [1.0], scale_for(rows.prefill_attention)))
    design.add_term("prefill_attention", pre, 1.0, rows.prefill_attention[pre])

    seqs = rows.decode_seqs[dec]
    threshold = SPLIT_MAX_SEQ_HEADS // heads
    seq_knots = log_knots(seqs.max() if len(seqs) else 2, extra=(threshold, threshold + 1))
    seq_breaks = break_at(seq_knots, threshold)
    design.add_block(Block("decode_attention", seq_knots, scale_for(rows.decode_context), "constant",
                           options.attention_smoothing, True, seq_breaks, options.step_penalty))
    design.add_term("decode_attention", dec, seqs, rows.decode_context[dec])

    excess = straggler_excess(rows)[dec] if options.longest_sequence_wait else np.zeros(len(dec))
    split = split_kernel_mask(seqs, rows.decode_max_context[dec], heads)
    for name, mask in (("straggler", ~split), ("straggler_split", split)):
        design.add_block(Block(name, seq_knots, scale_for(excess), "constant",
                               options.attention_smoothing, True, seq_breaks, options.step_penalty))
        keep = mask & (excess > 0)
        design.add_term(name, dec[keep], seqs[keep], excess[keep])

    values = design.solve(t, 1.0 / t)
    curves = {}
    for name in ("prefill_linear", "decode_linear"):
        y = np.maximum(values[name], 0.0)
        if options.monotone:
            y = isotonic_increasing(y)
        knots, y = with_secant_tail(design.blocks[name].knots, y)
        curves[name] = Curve(tuple(knots), tuple(y), "linear")
    for name in ("decode_attention", "straggler", "straggler_split"):
        curves[name] = Curve(tuple(design.blocks[name].knots), tuple(np.maximum(values[name], 0.0)),
                             "constant")
    curves["prefill_attention"] = Curve.constant(max(float(values["prefill_attention"][0]), 0.0))
    if not len(pre):  # a decode-only profile: price prompts like decodes rather than not at all
        curves["prefill_linear"] = curves["decode_linear"]
    if not len(dec_only):
        curves["decode_linear"] = curves["prefill_linear"]
    model = AdditiveLatencyModel(
        model=rows.model, tp=rows.tp, device=device_name, kind="fitted",
        prefill_per_seq=max(float(values["prefill_per_seq"][0]), 0.0), heads_per_device=heads,
        source=rows.source, info={"rows": len(rows)}, **curves)
    if options.preserve_total:
        predicted = sum(model.iteration_time(rows.batch(i)) for i in range(len(rows)))
        factor = float(t.sum()) / predicted if predicted > 0 else 1.0
        model = model.scaled(factor)
        model.info["total_rescale"] = round(factor, 5)
    return model
