"""Latency for a model with no profile: physical work from its config and the device's specs,
times efficiency factors learned across the profiled models, times what that physics misses on
architecturally similar profiled models. Beyond the SamuLLM paper, which needs a profile per
model.

Physics. Each term of the additive form (costmodel/latency.py) is physical seconds times a
learned factor shared by all models (a curve where it varies with batch size):

  G(n)   = overhead[tp] + per_layer[tp] * layers                  launches, allreduce latency
         + T_weights(n) * h(n_eq)                                  linear layers (roofline)
         + comm[tp] * T_allreduce(n)                               TP traffic
         + (per_seq + width_per_seq * T_width) * n                 (decode: every token a sequence)
  s_p    = per_seq + width_per_seq * T_width                       per prompt
  A_p    = (attention + attention_wide * w) * T_pair               prefill attention per pair
  A_d(S) = T_kv * (kv(S) + kv_wide * w) + T_kvq * kv_query(S)      decode attention per KV token
  B(S)   = T_block * (psi_B(S) + straggler_wide * w)  (psi_B_split for the split kernel)

T_weights(n): weight bytes an iteration of n tokens reads, over memory bandwidth (a mixture of
experts reads only the experts its tokens use). h, a curve over n_eq = n x (FLOPs per weight
byte relative to a dense fp16 model) x (the device's bandwidth/FLOP ratio relative to the
reference A100), carries the roofline: ~1.4 while weight reads dominate, rising linearly once
matmuls are compute bound, with the tile steps of the data. Dense models and mixtures of
experts have separate linear-layer factors (the MoE kernels of the data do not follow the dense
physics). T_width: layers x heads x head_dim of one sequence on a device (per-prompt cost on
the A100 data is proportional to it within 15% across families). T_kv / T_kvq: KV bytes per
token counted once per KV head / once per query head (the data's kernel re-read grouped-query
KV per query head, partly cached; the mix is learned from grouped-query models, split evenly
when there are none). Attention terms carry a physics prior for heads wider than 128
(max(1, head_dim / 128): a head's vector is split over a fixed thread group) and a learned
correction w = log2(head_dim / 128) where wide heads were profiled. Scalars are kept
non-negative; overheads carry a ridge so that profiles of similar sizes, which cannot separate
fixed from size-proportional costs, leave the cost with the size-proportional terms.

Learning: one penalised least-squares problem on relative error over (a sample of) the rows of
all profiled models. A prediction for a device other than the reference scales compute terms
by its peak FLOP/s, memory terms by its bandwidth, TP traffic by its link; fixed overheads carry
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
from costmodel.latency import AdditiveLatencyModel, SPLIT_MAX_SEQ_HEADS
from costmodel.latency_fit import split_kernel_mask, straggler_excess
from costmodel.models import ModelSpec
from costmodel.profiles import ProfileRows
from costmodel.spline_ls import (Block, SplineDesign, grid_knots, isotonic_increasing, log_knots,
                                 token_knots, with_secant_tail)

FACTORS_FORMAT = "samullm-latency-factors/1"
PHASES = ("prefill", "decode")
# When a device has no fast link, tensor-parallel traffic goes over PCIe 4.0 x16 (one way).
PCIE_BANDWIDTH = 25e9


@dataclass(frozen=True)
class _Physics:
    """Physical seconds of each term for one (model, TP, device)."""

    spec: ModelSpec
    tp: int
    device: DeviceSpec
    reference: DeviceSpec

    @property
    def layers(self) -> float:
        return float(self.spec.num_layers)

    def weight_time(self, n: np.ndarray) -> np.ndarray:
        return np.asarray(self.spec.decode_weight_bytes(n, self.tp), float) / self.device.memory_bandwidth

    def equivalent_tokens(self, n: np.ndarray) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        spec = self.spec
        if spec.num_experts > 1:
            active = spec.linear_flops_per_token(self.tp) / 2 * spec.dtype_bytes
            read = np.asarray(spec.decode_weight_bytes(n, self.tp), float)
            read -= spec.vocab_size * spec.hidden_size / self.tp * spec.dtype_bytes
            n = n * np.minimum(active / read, 1.0)
        ref, dev = self.reference, self.device
        return n * (dev.memory_bandwidth / dev.peak_flops) / (ref.memory_bandwidth / ref.peak_flops)

    def allreduce_time(self, n: np.ndarray) -> np.ndarray:
        if self.tp <= 1:
            return np.zeros_like(np.asarray(n, dtype=float))
        link = self.device.interconnect_bandwidth or PCIE_BANDWIDTH
        volume = 2 * self.spec.num_layers * np.asarray(n, float) * self.spec.hidden_size * self.spec.dtype_bytes
        return volume * 2 * (self.tp - 1) / self.tp / link

    @property
    def width_time(self) -> float:
        """One sequence's query width in every layer (layers x heads x head_dim on a device),
        as bytes over bandwidth: what per-sequence attention work scales with. On the A100
        data the per-prompt cost is proportional to it within 15% across all families."""
        spec = self.spec
        return (spec.num_layers * spec.heads_per_device(self.tp) * spec.head_dim
                * spec.dtype_bytes / self.device.memory_bandwidth)

    @property
    def pair_time(self) -> float:
        return self.spec.attention_flops(1.0, self.tp) * self.head_width / self.device.peak_flops

    @property
    def kv_time(self) -> float:
        """KV-cache bytes of one token on a device, over bandwidth."""
        return self.spec.kv_bytes_per_token(self.tp) * self.head_width / self.device.memory_bandwidth

    @property
    def kv_per_query_head_time(self) -> float:
        """The same if every query head read its own copy of K and V: what the A100 data's
        paged-attention kernel did with grouped-query attention (caches absorb part of it)."""
        spec = self.spec
        return (2 * spec.num_layers * spec.heads_per_device(self.tp) * spec.head_dim
                * spec.dtype_bytes * self.head_width / self.device.memory_bandwidth)

    @property
    def head_width(self) -> float:
        """Per-byte slowdown of attention kernels on heads wider than 128: vLLM's attention
        kernels split a head's vector over a fixed group of threads, so beyond 128 each thread
        works through proportionally more of it in sequence (physics prior, max(1, d/128))."""
        return max(self.spec.head_dim / 128, 1.0)

    @property
    def wide_heads(self) -> float:
        """How much wider than 128 the heads are, in doublings (0 up to 128): a learned
        correction on top of `head_width` where profiles of wide heads exist."""
        return max(float(np.log2(self.spec.head_dim / 128)), 0.0)

    @property
    def block_time(self) -> float:  # one head's K and V of one token, in every layer
        spec = self.spec
        return (spec.num_layers * spec.head_dim * 2 * spec.dtype_bytes * self.head_width
                / self.device.memory_bandwidth)


@dataclass(frozen=True)
class LatencyFactors:
    """Efficiency factors learned on profiled models (see the module docstring)."""

    reference_device: dict[str, float]
    scalars: dict[str, dict[str, float]]  # phase -> name -> value
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


def _learn(sampled, device: DeviceSpec, options: LearnOptions) -> LatencyFactors:
    physics = [_Physics(spec, rows.tp, device, device) for rows, spec in sampled]
    sizes = [len(rows) for rows, _ in sampled]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    target = np.concatenate([rows.seconds for rows, _ in sampled])
    typical = float(np.median(target))

    # Gather per-row physical features.
    feats: dict[str, list[np.ndarray]] = {k: [] for k in (
        "pre", "moe", "n", "neq", "layers", "tp", "tw", "comm", "seqs_p", "width",
        "pairs", "dseqs", "kv", "kvq", "wide", "block", "excess", "split")}
    for (rows, spec), phys in zip(sampled, physics):
        n = rows.prefill_tokens + rows.decode_seqs
        feats["pre"].append(rows.prefill_tokens > 0)
        feats["n"].append(n)
        feats["neq"].append(phys.equivalent_tokens(n))
        feats["layers"].append(np.full(len(rows), phys.layers))
        feats["tp"].append(np.full(len(rows), rows.tp))
        feats["moe"].append(np.full(len(rows), spec.num_experts > 1))
        feats["tw"].append(phys.weight_time(n))
        feats["comm"].append(phys.allreduce_time(n))
        feats["seqs_p"].append(rows.prefill_seqs)
        feats["width"].append(np.full(len(rows), phys.width_time))
        feats["pairs"].append(rows.prefill_attention * phys.pair_time)
        feats["dseqs"].append(rows.decode_seqs)
        feats["kv"].append(rows.decode_context * phys.kv_time)
        feats["kvq"].append(rows.decode_context * phys.kv_per_query_head_time)
        feats["wide"].append(np.full(len(rows), phys.wide_heads))
        feats["block"].append(np.full(len(rows), phys.block_time))
        feats["excess"].append(straggler_excess(rows))
        feats["split"].append(split_kernel_mask(rows.decode_seqs, rows.decode_max_context,
                                                spec.heads_per_device(rows.tp)))
    f = {k: np.concatenate(v) for k, v in feats.items()}

    design = SplineDesign(total)
    for phase in PHASES:
        idx = np.flatnonzero(f["pre"] if phase == "prefill" else ~f["pre"])
        if not len(idx):
            continue
        # Linear layers: dense models and mixtures of experts have separate factors (MoE
        # routing and expert matmuls do not follow the dense physics), all else is shared.
        for group, members in ((phase, idx[~f["moe"][idx]]), (f"{phase}_moe", idx[f["moe"][idx]])):
            if not len(members):
                continue
            for tp in sorted(set(f["tp"][members].astype(int))):
                at = members[f["tp"][members] == tp]
                design.add_block(Block(f"{group}.overhead.{tp}", [1.0], typical, nonnegative=True, ridge=100))
                design.add_term(f"{group}.overhead.{tp}", at, 1.0, 1.0)
                design.add_block(Block(f"{group}.per_layer.{tp}", [1.0], typical / 40, nonnegative=True, ridge=100))
                design.add_term(f"{group}.per_layer.{tp}", at, 1.0, f["layers"][at])
                if tp > 1:
                    design.add_block(Block(f"{group}.comm.{tp}", [1.0], 1.0, nonnegative=True))
                    design.add_term(f"{group}.comm.{tp}", at, 1.0, f["comm"][at])
            knots, breaks = token_knots(f["neq"][members])
            design.add_block(Block(f"{group}.weights", knots, 1.0, "linear",
                                   options.curve_smoothing, False, breaks, options.step_penalty))
            design.add_term(f"{group}.weights", members, f["neq"][members], f["tw"][members])
        seqs = f["seqs_p"][idx] if phase == "prefill" else f["dseqs"][idx]
        design.add_block(Block(f"{phase}.per_seq", [1.0], typical / 256, nonnegative=True))
        design.add_term(f"{phase}.per_seq", idx, 1.0, seqs)
        design.add_block(Block(f"{phase}.width_per_seq", [1.0], 1000.0, nonnegative=True))
        design.add_term(f"{phase}.width_per_seq", idx, 1.0, seqs * f["width"][idx])
    pre = np.flatnonzero(f["pre"])
    if len(pre):
        design.add_block(Block("prefill.attention", [1.0], 1.0, nonnegative=True))
        design.add_term("prefill.attention", pre, 1.0, f["pairs"][pre])
        design.add_block(Block("prefill.attention_wide", [1.0], 1.0, nonnegative=True))
        design.add_term("prefill.attention_wide", pre, 1.0, f["pairs"][pre] * f["wide"][pre])
    dec = np.flatnonzero(f["dseqs"] > 0)
    seq_knots = log_knots(max(f["dseqs"].max(), 2))
    # Decode attention reads a mix of KV-head and query-head bytes (the mix is what grouped-
    # query models pin down; for the others the two coincide and the penalty splits evenly).
    for name, feature in (("decode.kv", "kv"), ("decode.kv_query", "kvq")):
        design.add_block(Block(name, seq_knots, 0.5, "constant", options.attention_smoothing, True,
                               ridge=1e-3))
        design.add_term(name, dec, f["dseqs"][dec], f[feature][dec])
    design.add_block(Block("decode.kv_wide", [1.0], 1.0, nonnegative=True))
    design.add_term("decode.kv_wide", dec, 1.0, f["kv"][dec] * f["wide"][dec])
    for name, mask in (("decode.straggler", ~f["split"]), ("decode.straggler_split", f["split"])):
        design.add_block(Block(name, seq_knots, 50.0, "constant", options.attention_smoothing, True))
        keep = dec[mask[dec] & (f["excess"][dec] > 0)]
        design.add_term(name, keep, f["dseqs"][keep], f["excess"][keep] * f["block"][keep])
    design.add_block(Block("decode.straggler_wide", [1.0], 50.0, nonnegative=True))
    keep = dec[f["excess"][dec] > 0]
    design.add_term("decode.straggler_wide", keep, 1.0,
                    f["excess"][keep] * f["block"][keep] * f["wide"][keep])

    values = design.solve(target, 1.0 / target)
    fitted = design.predict(values)
    errors = np.abs(fitted / target - 1)

    scalars: dict[str, dict[str, float]] = {phase: {} for phase in PHASES}
    per_tp: dict[str, dict[str, dict[int, float]]] = {}
    curves = {}
    for name, v in values.items():
        phase, key = name.split(".", 1)
        if key.split(".")[0] in ("overhead", "per_layer", "comm"):
            kind, tp = key.split(".")
            table = per_tp.setdefault(phase, {"overhead": {}, "per_layer": {}, "comm": {}})
            table[kind][int(tp)] = float(v[0])
        elif len(design.blocks[name].knots) == 1:
            scalars.setdefault(phase, {})[key] = float(v[0])
        else:
            y = np.maximum(v, 0.0)
            knots = design.blocks[name].knots
            if key == "weights":
                knots, y = with_secant_tail(knots, isotonic_increasing(y))
                curves[name] = Curve(tuple(knots), tuple(y), "linear")
            else:  # the two KV mixes may trade sign between S knots; their sum may not
                curves[name] = Curve(tuple(knots), tuple(v if key.startswith("kv") else y), "constant")
    reference = {"peak_flops": device.peak_flops, "memory_bandwidth": device.memory_bandwidth,
                 "interconnect_bandwidth": device.interconnect_bandwidth}
    return LatencyFactors(
        reference_device=reference, scalars=scalars, per_tp=per_tp, curves=curves,
        source=", ".join(sorted({Path(rows.source).name for rows, _ in sampled})),
        info={"device": device.name, "rows_per_profile": options.rows_per_profile,
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
    phys = _Physics(spec, tp, device, factors.reference())
    heads = spec.heads_per_device(tp)
    knots = grid_knots(max_tokens)
    curves: dict[str, Curve] = {}
    per_seq: dict[str, float] = {}
    for phase in PHASES:
        s = factors.scalars.get(phase, {})
        group = f"{phase}_moe" if spec.num_experts > 1 and f"{phase}_moe.weights" in factors.curves else phase
        if f"{group}.weights" not in factors.curves:
            continue
        per_seq[phase] = s.get("per_seq", 0.0) + s.get("width_per_seq", 0.0) * phys.width_time
        g = (factors.tp_value(group, "overhead", tp)
             + factors.tp_value(group, "per_layer", tp) * phys.layers
             + phys.weight_time(knots) * _curve_at(factors.curves[f"{group}.weights"], phys.equivalent_tokens(knots))
             + factors.tp_value(group, "comm", tp) * phys.allreduce_time(knots))
        if phase == "decode":
            g = g + per_seq[phase] * knots
        g = isotonic_increasing(np.maximum(g, 0.0))
        tail_knots, tail_y = with_secant_tail(knots, g)
        curves[f"{phase}_linear"] = Curve(tuple(tail_knots), tuple(tail_y), "linear")
    if "prefill_linear" not in curves or "decode_linear" not in curves:
        raise UserInputError("latency factors lack a prefill or decode part; learn them from "
                             "profiles that have both phases")
    pre = factors.scalars.get("prefill", {})
    dec = factors.scalars.get("decode", {})
    prefill_per_seq = max(per_seq["prefill"], 0.0)
    kv, kv_query = factors.curves["decode.kv"], factors.curves["decode.kv_query"]
    threshold = SPLIT_MAX_SEQ_HEADS // heads
    seq_knots = np.unique(np.concatenate([kv.x, [threshold, threshold + 1]]))
    per_token = (phys.kv_time * (_curve_at(kv, seq_knots) + dec.get("kv_wide", 0.0) * phys.wide_heads)
                 + phys.kv_per_query_head_time * _curve_at(kv_query, seq_knots))
    curves["decode_attention"] = Curve(tuple(seq_knots), tuple(np.maximum(per_token, 0.0)), "constant")
    for name in ("straggler", "straggler_split"):
        curve = factors.curves[f"decode.{name}"]
        y = phys.block_time * np.asarray(curve.y) + phys.block_time * dec.get("straggler_wide", 0.0) * phys.wide_heads
        curves[name] = Curve(tuple(curve.x), tuple(y), "constant")
    pair = pre.get("attention", 0.0) + pre.get("attention_wide", 0.0) * phys.wide_heads
    curves["prefill_attention"] = Curve.constant(max(pair, 0.0) * phys.pair_time)
    return AdditiveLatencyModel(
        model=spec.name, tp=tp, device=device.name, kind="predicted",
        prefill_per_seq=prefill_per_seq, heads_per_device=heads,
        source=f"predicted from config with factors learned on: {factors.source}",
        info={"factors": factors.info}, **curves)


def _curve_at(curve: Curve, values: np.ndarray) -> np.ndarray:
    return np.array([curve(float(v)) for v in np.asarray(values, dtype=float)])
