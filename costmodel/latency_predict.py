"""Latency for a model with no profile: physical work from its config and the device's specs
(costmodel/latency_physics.py), times efficiency factors learned across the profiled models,
times what that physics misses on architecturally similar profiled models. Beyond the SamuLLM
paper, which needs a profile per model.

The terms of the additive form (costmodel/latency.py) are built as

  G(n)   = fixed[phase, tp] + body(n)  (+ per_seq x n when decoding)  linear layers, overheads
  body   = GPU(n)                                CUDA-graph decode (up to 256 sequences)
         = max(host_op x host ops, GPU(n))       eager iterations (prefill, larger decodes)
  GPU(n) = kernel x kernels + allreduce[phase, tp] x all-reduces
         + T_weights(n) x h_phase(n_eq) + comm[phase, tp] x T_allreduce_bytes(n)
  s_p    = per_seq + width_per_seq x T_width                       per prompt
  s_d    = per_seq + width_per_seq x T_width x (1/g + (1 - 1/g) x L2_TO_DRAM)   per decode seq
  A_p    = attention x T_pair                                      prefill attention, per pair
  A_d(S) = T_kv x kv(K) + (T_kv_query - T_kv) x kv_l2(P)           decode attention, per token
  B(S)   = T_block x straggler(P)  (straggler_split(P) for the split kernel)
  with P = S x query heads per device (thread blocks per partition of the attention grid) and
  K = S x KV heads per device (the distinct KV streams the grid fetches from DRAM; K = P
  without grouped-query attention).

Kernels and host ops per iteration follow from the architecture's kernels per layer; T_* are
physical seconds (latency_physics.EnginePhysics). h is the weights' roofline factor over
compute-equivalent tokens, at least 1 (no matmul reads its weights faster than the memory
bandwidth), with its own curve for mixtures of experts when they were profiled, as is the
per-kernel cost. kv is the efficiency of streaming each KV head from DRAM; kv_l2 prices the
re-reads of a grouped-query KV head by its other query heads, which find it in L2 (learned from
grouped-query profiles; L2_TO_DRAM_PRIOR x kv without them). One host cost per op and one GPU
cost per kernel serve every TP degree; fixed costs, all-reduce latencies and all-reduce
bandwidth are per TP degree.

Learning is a penalised least-squares problem on relative error over (a sample of) the rows of
all profiled models. The maximum of host and GPU is fitted by alternating: start from a
physical guess of which side binds each eager row, solve, move each row to the side the fit
says binds (beyond a 5% margin), and repeat until the sides settle.

A prediction for a device other than the reference scales compute terms by its peak FLOP/s,
memory terms by its bandwidth, TP traffic by its link; host, per-kernel and fixed costs carry
over as measured. Per-TP factors hold their nearest profiled value beyond the profiled degrees.

Residual transfer: see predict_latency_model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from costmodel.curves import Curve
from costmodel.errors import UserInputError
from costmodel.hardware import DeviceSpec
from costmodel.latency import AdditiveLatencyModel
from costmodel.latency_fit import split_kernel_mask, straggler_excess
from costmodel.latency_physics import GRAPH_MAX_SEQS, L2_TO_DRAM, EnginePhysics
from costmodel.models import ModelSpec
from costmodel.profiles import ProfileRows
from costmodel.spline_ls import (Block, SplineDesign, break_at, grid_knots, isotonic_increasing,
                                 log_knots, token_knots, with_secant_tail)

FACTORS_FORMAT = "samullm-latency-factors/2"
PHASES = ("prefill", "decode")
# Factors learned per TP degree: phase -> kinds.
_PER_TP_KINDS = ("fixed", "allreduce", "comm")
# Blocks per partition of the paged-attention grid at which the split kernel stops being used.
_SPLIT_BLOCKS = 512
# Starting guess for the host's cost per eagerly dispatched op (PyTorch module call and kernel
# launch), and the tokens at which an A100's matmuls turn compute bound (peak FLOP/s over
# bandwidth): only used to pick the first side of max(host, GPU) before alternating.
HOST_OP_PRIOR = 30e-6
_RIDGE_TOKENS = 150.0
# Without grouped-query profiles, a re-read of a KV head from L2 is priced at this share of a
# DRAM read (the A100's L2 delivers about 2.5 times its DRAM bandwidth).
L2_TO_DRAM_PRIOR = L2_TO_DRAM
# The alternation stops when fewer than this share of eager rows change side; a row moves only
# when the other side exceeds its own by this relative margin.
_HYSTERESIS = 0.05
_SETTLED_ROWS = 0.002
# Knots of the shared roofline curves: every token count up to _DENSE_TOKENS, then every
# _TOKEN_STEP, with steps allowed at multiples of _TILE_TOKENS (GEMM tiles). Coarser than a
# single model's fit: a curve shared by different shapes carries no finer detail.
_DENSE_TOKENS, _TOKEN_STEP, _TILE_TOKENS = 64, 16, 128


@dataclass(frozen=True)
class LatencyFactors:
    """Efficiency factors learned on profiled models (see the module docstring)."""

    reference_device: dict[str, float]
    scalars: dict[str, dict[str, float]]  # group (phase, "gpu", "eager"...) -> name -> value
    per_tp: dict[str, dict[str, dict[int, float]]]  # phase -> name -> tp -> value
    curves: dict[str, Curve]
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def reference(self) -> DeviceSpec:
        ref = self.reference_device
        return DeviceSpec("reference", "gpu", 1, ref["peak_flops"], ref["memory_bandwidth"],
                          ref.get("interconnect_bandwidth", 0.0))

    def tp_value(self, phase: str, name: str, tp: int) -> float:
        """A per-TP factor. Between profiled TP degrees it is interpolated in log2(TP); beyond
        them it holds the nearest one (extrapolating these fitted factors is not safe)."""
        table = self.per_tp.get(phase, {}).get(name, {})
        if tp in table:
            return table[tp]
        known = sorted(table)
        if not known:
            return 0.0
        if tp < known[0] or tp > known[-1]:
            return table[known[0] if tp < known[0] else known[-1]]
        low = max(k for k in known if k < tp)
        high = min(k for k in known if k > tp)
        frac = (np.log2(tp) - np.log2(low)) / (np.log2(high) - np.log2(low))
        return float(table[low] + frac * (table[high] - table[low]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FACTORS_FORMAT, "source": self.source,
            "reference_device": self.reference_device,
            "scalars": {p: {k: float(f"{v:.6g}") for k, v in d.items()} for p, d in self.scalars.items()},
            "per_tp": {p: {k: {str(tp): float(f"{v:.6g}") for tp, v in t.items()} for k, t in d.items()}
                       for p, d in self.per_tp.items()},
            "curves": {k: c.to_dict() for k, c in self.curves.items()},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyFactors":
        if data.get("format") != FACTORS_FORMAT:
            raise UserInputError(f"latency factors have format {data.get('format')!r}, expected {FACTORS_FORMAT!r}")
        return cls(
            reference_device=data["reference_device"], scalars=data["scalars"],
            per_tp={p: {k: {int(tp): v for tp, v in t.items()} for k, t in d.items()}
                    for p, d in data["per_tp"].items()},
            curves={k: Curve.from_dict(c) for k, c in data["curves"].items()},
            source=data.get("source", ""), info=data.get("info", {}))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyFactors":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise UserInputError(f"cannot read latency factors {str(path)!r}: {err}") from err


# ---- learning -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LearnOptions:
    rows_per_profile: int = 1500
    seed: int = 0
    curve_smoothing: float = 10
    step_penalty: float = 0.1
    attention_smoothing: float = 3.0
    max_passes: int = 8  # alternations between the sides of the two maxima


def learn_factors(profiles: list[tuple[ProfileRows, ModelSpec]], device: DeviceSpec,
                  options: LearnOptions = LearnOptions()) -> LatencyFactors:
    """Learn the factors from profiles measured on `device` (the reference device)."""
    if not profiles:
        raise UserInputError("learning latency factors needs at least one profile")
    rng = np.random.default_rng(options.seed)
    sampled = []
    for rows, spec in profiles:
        keep = rng.permutation(len(rows))[: options.rows_per_profile]
        sampled.append((rows.subset(np.sort(keep)), spec))
    return _learn(sampled, device, options)


def _row_features(sampled, device: DeviceSpec) -> dict[str, np.ndarray]:
    """Per-row physical features of all sampled rows, concatenated."""
    feats: dict[str, list[np.ndarray]] = {}

    def put(name: str, values) -> None:
        feats.setdefault(name, []).append(np.asarray(values))

    for rows, spec in sampled:
        phys = EnginePhysics(spec, rows.tp, device, device)
        size = len(rows)
        n = rows.prefill_tokens + rows.decode_seqs
        pre = rows.prefill_tokens > 0
        put("pre", pre)
        put("eager", pre | (rows.decode_seqs > GRAPH_MAX_SEQS))
        put("moe", np.full(size, spec.num_experts > 1))
        put("gqa", np.full(size, phys.heads > phys.kv_heads))
        put("tp", np.full(size, rows.tp))
        put("n", n)
        put("neq", phys.equivalent_tokens(n))
        put("tw", phys.weight_time(n))
        put("comm", phys.allreduce_time(n))
        put("kernels", np.full(size, phys.gpu_kernels))
        put("allreduces", np.full(size, phys.allreduces))
        put("host_ops", np.full(size, phys.host_ops))
        put("seqs_p", rows.prefill_seqs)
        put("width", np.where(pre, phys.width_time, phys.decode_width_time))
        put("pairs", rows.prefill_attention * phys.pair_time)
        put("dseqs", rows.decode_seqs)
        put("blocks", phys.blocks(rows.decode_seqs))
        put("streams", phys.kv_streams(rows.decode_seqs))
        put("kv", rows.decode_context * phys.kv_time)
        put("kvq", rows.decode_context * phys.kv_query_time)
        put("block", np.full(size, phys.block_time))
        put("excess", straggler_excess(rows))
        put("split", split_kernel_mask(rows.decode_seqs, rows.decode_max_context, phys.heads))
    return {k: np.concatenate(v) for k, v in feats.items()}


_HOST = ("eager.op",)
_GPU_LINEAR = ("kernel", "allreduce", "comm", "weights")


def _design(f: dict[str, np.ndarray], host_rows: np.ndarray, gpu_mask: np.ndarray,
            typical: float, options: LearnOptions) -> SplineDesign:
    """The least-squares design with the host terms on `host_rows` and the GPU linear-layer
    terms on `gpu_mask` (masks over rows). Both on the same row make a sum: the design in
    which each side of the maximum is evaluated."""
    total = len(f["n"])
    eager = f["eager"]
    design = SplineDesign(total)
    tps = sorted(set(f["tp"].astype(int)))
    for phase in PHASES:
        idx = np.flatnonzero(f["pre"] if phase == "prefill" else ~f["pre"])
        if not len(idx):
            continue
        gpu = idx[gpu_mask[idx]]
        for tp in tps:
            at = idx[f["tp"][idx] == tp]
            if len(at):
                _scalar(design, f"{phase}.fixed.{tp}", typical, at, 1.0, ridge=10)
            on = gpu[f["tp"][gpu] == tp]
            if tp > 1 and len(at):
                _scalar(design, f"{phase}.allreduce.{tp}", typical / 100, on, f["allreduces"][on])
                _scalar(design, f"{phase}.comm.{tp}", 1.0, on, f["comm"][on])
        # Dense models and mixtures of experts have their own roofline curves (the MoE
        # expert kernels of the data are Triton kernels that do not follow the dense GEMMs'
        # efficiency). Each curve is the roofline's excess over reading the weights at peak
        # bandwidth: T_weights itself is a fixed offset of the GPU rows (see _learn).
        for group, members, everyone in (
                (phase, gpu[~f["moe"][gpu]], idx[~f["moe"][idx]]),
                (f"{phase}_moe", gpu[f["moe"][gpu]], idx[f["moe"][idx]])):
            if not len(everyone):
                continue
            knots, breaks = token_knots(f["neq"][everyone], dense_up_to=_DENSE_TOKENS,
                                        step=_TOKEN_STEP, jump_every=_TILE_TOKENS)
            design.add_block(Block(f"{group}.weights", knots, 1.0, "linear",
                                   options.curve_smoothing, False, breaks, options.step_penalty,
                                   nonnegative=True))
            design.add_term(f"{group}.weights", members, f["neq"][members], f["tw"][members])
        seqs = f["seqs_p"][idx] if phase == "prefill" else f["dseqs"][idx]
        _scalar(design, f"{phase}.per_seq", typical / 256, idx, seqs)
        _scalar(design, f"{phase}.width_per_seq", 1000.0, idx, seqs * f["width"][idx])
    # One GPU cost per kernel launched (the same kernels in both phases; MoE models' own), and
    # one host cost per op dispatched eagerly (a property of the host and PyTorch, not of the
    # TP degree).
    gpu_rows = np.flatnonzero(gpu_mask)
    for group, members in (("gpu", gpu_rows[~f["moe"][gpu_rows]]),
                           ("gpu_moe", gpu_rows[f["moe"][gpu_rows]])):
        if np.any(f["moe"] == (group == "gpu_moe")):
            _scalar(design, f"{group}.kernel", typical / 500, members, f["kernels"][members])
    if np.any(eager):
        on = np.flatnonzero(host_rows)
        _scalar(design, "eager.op", typical / 500, on, f["host_ops"][on])
    pre = np.flatnonzero(f["pre"])
    if len(pre):
        _scalar(design, "prefill.attention", 1.0, pre, f["pairs"][pre])

    dec = np.flatnonzero(f["dseqs"] > 0)
    block_knots = log_knots(max(f["blocks"].max(), 2), extra=(_SPLIT_BLOCKS, _SPLIT_BLOCKS + 1))
    split_break = break_at(block_knots, _SPLIT_BLOCKS)
    # DRAM side on every decode row, over the KV streams; the L2 side of grouped-query rows on
    # top, over the thread blocks (see latency_physics: each of the g query heads sharing a KV
    # head re-reads it, from L2).
    sides = [("decode.kv", dec, f["kv"][dec], f["streams"][dec])]
    gqa = dec[f["gqa"][dec]]
    if len(gqa):
        sides.append(("decode.kv_l2", gqa, f["kvq"][gqa] - f["kv"][gqa], f["blocks"][gqa]))
    for name, rows, multiplier, parallelism in sides:
        design.add_block(Block(name, block_knots, 0.5, "constant", options.attention_smoothing,
                               True, split_break, options.step_penalty, ridge=1e-3))
        design.add_term(name, rows, parallelism, multiplier)
    for name, mask in (("decode.straggler", ~f["split"]), ("decode.straggler_split", f["split"])):
        design.add_block(Block(name, block_knots, 50.0, "constant", options.attention_smoothing,
                               True, split_break, options.step_penalty))
        keep = dec[mask[dec] & (f["excess"][dec] > 0)]
        design.add_term(name, keep, f["blocks"][keep], f["excess"][keep] * f["block"][keep])
    return design


def _scalar(design: SplineDesign, name: str, scale: float, rows, multiplier, ridge: float = 0.0) -> None:
    design.add_block(Block(name, [1.0], scale, nonnegative=True, ridge=ridge))
    design.add_term(name, rows, 1.0, multiplier)


def _parts(design: SplineDesign, values: dict[str, np.ndarray], prefixes) -> np.ndarray:
    """Each row's sum of the terms whose block names start with one of `prefixes`."""
    chosen = {name: (v if any(_matches(name, p) for p in prefixes) else np.zeros_like(v))
              for name, v in values.items()}
    return design.predict(chosen)


def _matches(name: str, prefix: str) -> bool:
    """Whether block `name` belongs to `prefix`: a kind of GPU term in any group, or a name."""
    if prefix in _GPU_LINEAR:
        return name.split(".")[1] == prefix
    return name == prefix or name.startswith(prefix + ".")


def _learn(sampled, device: DeviceSpec, options: LearnOptions) -> LatencyFactors:
    f = _row_features(sampled, device)
    target = np.concatenate([rows.seconds for rows, _ in sampled])
    typical = float(np.median(target))
    eager = f["eager"]
    every = np.ones(len(target), dtype=bool)
    evaluation = _design(f, eager, every, typical, options)  # both sides on every eager row
    # Start from a physical guess of which side binds: a host cost of HOST_OP_PRIOR per op
    # against the weights' roofline plus a few microseconds per kernel.
    gpu_guess = (f["tw"] * np.maximum(1.0, f["neq"] / _RIDGE_TOKENS) + 3e-6 * f["kernels"])
    host_rows = eager & (HOST_OP_PRIOR * f["host_ops"] > gpu_guess)
    passes = 0
    pinned = None
    while True:
        passes += 1
        design = _design(f, host_rows, ~host_rows, typical, options)
        offset = np.where(host_rows, 0.0, f["tw"])  # weights read at peak bandwidth
        values = design.solve(target - offset, 1.0 / target, pinned)
        pinned = design.pinned
        host = _parts(evaluation, values, _HOST)
        gpu = f["tw"] + _parts(evaluation, values, _GPU_LINEAR)
        # Rows within _HYSTERESIS of the crossover keep their side (either explains them).
        new_host = np.where(np.abs(host - gpu) > _HYSTERESIS * np.maximum(host, gpu),
                            eager & (host > gpu), host_rows)
        changed = int(np.sum(new_host != host_rows))
        host_rows = new_host
        if changed <= _SETTLED_ROWS * np.sum(eager) or passes >= options.max_passes:
            break
    if changed:  # the last solve belongs to the previous assignment: solve once more
        design = _design(f, host_rows, ~host_rows, typical, options)
        offset = np.where(host_rows, 0.0, f["tw"])
        values = design.solve(target - offset, 1.0 / target, pinned)
    host_bound = host_rows
    fitted = design.predict(values) + offset
    errors = np.abs(fitted / target - 1)

    scalars: dict[str, dict[str, float]] = {}
    per_tp: dict[str, dict[str, dict[int, float]]] = {}
    curves = {}
    for name, v in values.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[1] in _PER_TP_KINDS:
            per_tp.setdefault(parts[0], {}).setdefault(parts[1], {})[int(parts[2])] = float(v[0])
        elif len(design.blocks[name].knots) == 1:
            scalars.setdefault(parts[0], {})[parts[1]] = float(v[0])
        else:
            knots = design.blocks[name].knots
            y = np.maximum(v, 0.0)
            if parts[1] == "weights":  # stored as the whole roofline factor, 1 + excess
                knots, y = with_secant_tail(knots, isotonic_increasing(1.0 + y))
                curves[name] = Curve(tuple(knots), tuple(y), "linear")
            else:
                curves[name] = Curve(tuple(knots), tuple(y), "constant")
    reference = {"peak_flops": device.peak_flops, "memory_bandwidth": device.memory_bandwidth,
                 "interconnect_bandwidth": device.interconnect_bandwidth}
    return LatencyFactors(
        reference_device=reference, scalars=scalars, per_tp=per_tp, curves=curves,
        source=", ".join(sorted({Path(rows.source).name for rows, _ in sampled})),
        info={"device": device.name, "rows_per_profile": options.rows_per_profile,
              "passes": passes, "host_bound_share": round(float(np.mean(host_bound[eager])), 3)
              if np.any(eager) else 0.0,
              "fit_median_error": round(float(np.median(errors)), 4),
              "fit_p90_error": round(float(np.percentile(errors, 90)), 4)})


# ---- transferring what physics misses from similar profiled models ------------------------------
# Architecture similarity: squared distances in these log2 features, over these scales.
_SIMILARITY_SCALES = {"hidden": 0.25, "layers": 0.25, "mlp": 0.25, "q_per_kv": 0.5,
                      "head_dim": 0.5, "vocab": 1.0, "experts": 0.5, "gated": 0.5}
# Weight of "no correction" in the blend: a reference at this distance counts as much as physics.
_PRIOR_DISTANCE = 2.0


def architecture_features(spec: ModelSpec) -> dict[str, float]:
    mlp = spec.intermediate_size * (3 if spec.gated_mlp else 2) / spec.hidden_size
    return {"hidden": np.log2(spec.hidden_size), "layers": np.log2(spec.num_layers),
            "mlp": np.log2(mlp), "q_per_kv": np.log2(spec.num_attention_heads / spec.num_kv_heads),
            "head_dim": np.log2(spec.head_dim), "vocab": np.log2(spec.vocab_size),
            "experts": np.log2(spec.num_experts), "gated": float(spec.gated_mlp)}


def architecture_distance(a: ModelSpec, b: ModelSpec) -> float:
    fa, fb = architecture_features(a), architecture_features(b)
    return float(np.sqrt(sum(((fa[k] - fb[k]) / s) ** 2 for k, s in _SIMILARITY_SCALES.items())))


@dataclass(frozen=True)
class Reference:
    """A profiled model: its spec and its fitted latency model (one TP, one device)."""

    spec: ModelSpec
    fitted: AdditiveLatencyModel


# ---- predicting ---------------------------------------------------------------------------------

def predict_latency_model(spec: ModelSpec, tp: int, device: DeviceSpec, factors: LatencyFactors,
                          references: list[Reference] = (), max_tokens: int = 32768
                          ) -> AdditiveLatencyModel:
    """The additive form for (spec, tp, device): physics times learned factors, times what
    that physics misses on similar profiled models (`references` at the same TP on the same
    device), transferred in proportion to their architectural similarity.

    For each reference m, every curve's ratio fitted_m / physics_m is a residual correction;
    the prediction multiplies its physics by the geometric mean of those ratios, weighted by
    exp(-d^2 / 2) for the architecture distance d, with "no correction" weighted as a reference
    at distance 2. A model with a profiled twin (same figures) thus gets its twin's fitted
    curves; a model unlike any profiled one gets physics alone."""
    base = _physics_model(spec, tp, device, factors, max_tokens)
    on_device = [r for r in references if r.fitted.device == device.name]
    if not on_device:
        return base
    # References at this TP degree; when none was profiled at it, those at the nearest one
    # (what physics misses for a model changes less with TP than between models).
    ref_tp = min({r.fitted.tp for r in on_device}, key=lambda k: (abs(np.log2(k / tp)), -k))
    usable = [r for r in on_device if r.fitted.tp == ref_tp]
    ref_bases = {id(r): _physics_model(r.spec, ref_tp, device, factors, max_tokens) for r in usable}
    # Profiled twins (same figures) share one vote, so a family profiled many times does not
    # outvote a closer model profiled once.
    twins = [sum(architecture_distance(r.spec, o.spec) == 0 for o in usable) for r in usable]
    weights = np.array([np.exp(-architecture_distance(spec, r.spec) ** 2) / k
                        for r, k in zip(usable, twins)])
    prior = np.exp(-_PRIOR_DISTANCE ** 2)
    shares = weights / (weights.sum() + prior)
    bases = [ref_bases[id(r)] for r in usable]

    def corrected(name: str) -> Curve:
        curve = getattr(base, name)
        x = np.asarray(curve.x)
        log_ratio = np.zeros(len(x))
        for share, ref, ref_base in zip(shares, usable, bases):
            fitted = _curve_at(getattr(ref.fitted, name), x)
            physics = _curve_at(getattr(ref_base, name), x)
            ok = (fitted > 0) & (physics > 0)
            log_ratio += share * np.where(ok, np.log(np.where(ok, fitted, 1) / np.where(ok, physics, 1)), 0.0)
        y = np.asarray(curve.y) * np.exp(log_ratio)
        if name.endswith("_linear"):
            y = isotonic_increasing(y)
        return Curve(curve.x, tuple(y), curve.extrapolate)

    def scalar_ratio(get) -> float:
        total = 0.0
        for share, ref, ref_base in zip(shares, usable, bases):
            fitted, physics = get(ref.fitted), get(ref_base)
            if fitted > 0 and physics > 0:
                total += share * np.log(fitted / physics)
        return float(np.exp(total))

    curves = {name: corrected(name) for name in ("prefill_linear", "decode_linear",
                                                  "decode_attention", "straggler", "straggler_split")}
    pair = base.prefill_attention(1.0) * scalar_ratio(lambda m: m.prefill_attention(1.0))
    curves["prefill_attention"] = Curve.constant(pair)
    nearest = usable[int(np.argmax(weights))]
    return AdditiveLatencyModel(
        model=spec.name, tp=tp, device=device.name, kind="predicted",
        prefill_per_seq=base.prefill_per_seq * scalar_ratio(lambda m: m.prefill_per_seq),
        heads_per_device=base.heads_per_device,
        source=base.source + f"; residuals from {len(usable)} profiled models at TP {ref_tp}",
        info={**base.info, "nearest_profiled": nearest.spec.name, "reference_tp": ref_tp,
              "nearest_distance": round(architecture_distance(spec, nearest.spec), 3),
              "correction_share": round(float(shares.sum()), 3)},
        **curves)


def _physics_model(spec: ModelSpec, tp: int, device: DeviceSpec,
                   factors: LatencyFactors, max_tokens: int) -> AdditiveLatencyModel:
    phys = EnginePhysics(spec, tp, device, factors.reference())
    knots = grid_knots(max_tokens)
    curves: dict[str, Curve] = {}
    per_seq: dict[str, float] = {}
    host = factors.scalars.get("eager", {}).get("op", 0.0) * phys.host_ops
    for phase in PHASES:
        s = factors.scalars.get(phase, {})
        moe = f"{phase}_moe.weights" in factors.curves and spec.num_experts > 1
        group = f"{phase}_moe" if moe else phase
        weights = factors.curves.get(f"{group}.weights")
        if weights is None:
            continue
        width = phys.width_time if phase == "prefill" else phys.decode_width_time
        per_seq[phase] = s.get("per_seq", 0.0) + s.get("width_per_seq", 0.0) * width
        kernel = factors.scalars.get("gpu_moe" if moe else "gpu", {}).get("kernel", 0.0)
        gpu = (kernel * phys.gpu_kernels
               + factors.tp_value(phase, "allreduce", tp) * phys.allreduces
               + phys.weight_time(knots) * _curve_at(weights, phys.equivalent_tokens(knots))
               + factors.tp_value(phase, "comm", tp) * phys.allreduce_time(knots))
        eager = knots > (0 if phase == "prefill" else GRAPH_MAX_SEQS)
        g = factors.tp_value(phase, "fixed", tp) + np.where(eager, np.maximum(gpu, host), gpu)
        if phase == "decode":
            g = g + per_seq[phase] * knots
        g = isotonic_increasing(np.maximum(g, 0.0))
        tail_knots, tail_y = with_secant_tail(knots, g)
        curves[f"{phase}_linear"] = Curve(tuple(tail_knots), tuple(tail_y), "linear")
    if "prefill_linear" not in curves or "decode_linear" not in curves:
        raise UserInputError("latency factors lack a prefill or decode part; learn them from "
                             "profiles that have both phases")
    seqs = np.arange(1.0, _MAX_DECODE_SEQS + 1)
    blocks = phys.blocks(seqs)
    kv = _curve_at(factors.curves["decode.kv"], phys.kv_streams(seqs))
    per_token = phys.kv_time * kv
    if phys.heads > phys.kv_heads:
        l2 = factors.curves.get("decode.kv_l2")
        l2_rate = _curve_at(l2, blocks) if l2 is not None else L2_TO_DRAM_PRIOR * kv
        per_token = per_token + (phys.kv_query_time - phys.kv_time) * l2_rate
    curves["decode_attention"] = Curve(tuple(seqs), tuple(per_token), "constant")
    for name in ("straggler", "straggler_split"):
        y = phys.block_time * _curve_at(factors.curves[f"decode.{name}"], blocks)
        curves[name] = Curve(tuple(seqs), tuple(y), "constant")
    pair = factors.scalars.get("prefill", {}).get("attention", 0.0)
    curves["prefill_attention"] = Curve.constant(max(pair, 0.0) * phys.pair_time)
    return AdditiveLatencyModel(
        model=spec.name, tp=tp, device=device.name, kind="predicted",
        prefill_per_seq=max(per_seq["prefill"], 0.0), heads_per_device=phys.heads,
        source=f"predicted from config with factors learned on: {factors.source}",
        info={"factors": factors.info}, **curves)


# Decode batch sizes the predicted attention curves are tabulated for (constant beyond).
_MAX_DECODE_SEQS = 2048


def _curve_at(curve: Curve, values: np.ndarray) -> np.ndarray:
    return curve.at(values)
