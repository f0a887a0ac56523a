"""What the runner learns from finished work, and how it reaches the planner.

These observations are stored (`ObservedStat`), so that later runs use them too:

- output lengths of a model's rows, with censoring: a row that stopped because it hit a limit
  (finish reason "length": `max_tokens`, or the context) says only "at least this long";
  `costmodel.lengths.combine` treats it so.
- iteration latencies of an engine of (model, TP, device): a sample of the iteration log's
  batch shapes and the engine's wall time over its whole run (iterations plus whatever the
  worker does between them). The correction the planner applies is measured wall time over
  the time the current latency model predicts for those same iterations, recomputed at each
  plan, so a recalibrated latency model starts from its own error, not the old one's.
- engine limits an engine reported when it loaded (`max_num_seqs`, token budget, block size,
  KV blocks): on CPU these differ from the GPU-minded defaults, and the replay must obey them.
- engine start-up: seconds from the worker's start to its engine loaded, per (model, TP,
  device); the planner's load estimate becomes the median of the latest ones (what a move costs).
- replica balance: the run seconds of every replica of a DP launch that ran to its end; the
  slowest over their mean stretches DP plans (the node ends with its slowest replica; on the
  2-core CPU VM, two replicas of one node on the same rows ran 5-35% apart, median 14%).
- re-tokenization of a model's outputs: a downstream prompt reads an upstream's output as text,
  which the downstream engine encodes again; that can take more tokens than were generated
  (1.45x for the random-weight test models, about 1x for trained ones). Measured with the
  upstream model's own tokenizer (a downstream model of another family may differ).

`runtime_coster` builds the planner's coster with all of them applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from samullm.worker.messages import IterationRecord, Loaded, RowResult

MAX_ITERATIONS_KEPT = 2000  # per observation; a sample evenly spaced over the run
MIN_ITERATIONS = 10  # fewer: no latency correction from that observation
FACTOR_BOUNDS = (0.02, 50.0)  # a predicted (uncalibrated) model can be off by 10x and more
LATEST_OBSERVATIONS = 20  # per (model, kind, device, tp)
MAX_LENGTHS = 20000  # output lengths per model fed to the planner


def output_lengths_payload(results: Iterable[RowResult], node: str) -> dict[str, Any]:
    """Lengths of a node's successful rows; `censored` marks the rows cut by a limit."""
    ok = [r for r in results if r.finish_reason != "error" and r.output_tokens > 0]
    return {
        "node": node,
        "lengths": [int(r.output_tokens) for r in ok],
        "censored": [r.finish_reason == "length" for r in ok],
    }


RETOKENIZE_SAMPLE = 500  # rows re-encoded per finished node
RATIO_BOUNDS = (0.5, 4.0)


def load_tokenizer(model: str):
    """The model's tokenizer without downloading anything: its tokenizer.json (fast), else
    transformers from local files. None when neither works."""
    from pathlib import Path

    path = Path(model) / "tokenizer.json"
    try:
        if path.is_file():
            from tokenizers import Tokenizer

            fast = Tokenizer.from_file(str(path))
            return lambda text: len(fast.encode(text, add_special_tokens=False).ids)
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(model, local_files_only=True)
        return lambda text: len(auto.encode(text, add_special_tokens=False))
    except Exception:
        return None


def retokenized_payload(results: Iterable[RowResult], node: str, count_tokens) -> dict[str, Any] | None:
    """Generated tokens and the tokens of the same texts encoded again, over a sample of rows."""
    ok = [r for r in results if r.finish_reason != "error" and r.output_tokens > 0 and r.text]
    if not ok or count_tokens is None:
        return None
    step = max(1, len(ok) // RETOKENIZE_SAMPLE)
    sample = ok[::step][:RETOKENIZE_SAMPLE]
    return {"node": node, "generated": int(sum(r.output_tokens for r in sample)),
            "retokenized": int(sum(count_tokens(r.text) for r in sample))}


BATCH_FIELDS = ("prefill_seqs", "prefill_tokens", "prefill_attention", "decode_seqs", "decode_context",
                "decode_max_context")


def latency_payload(iterations: Sequence[IterationRecord], wall_seconds: float) -> dict[str, Any]:
    """A sample of at most MAX_ITERATIONS_KEPT iterations (shape + seconds), their true count,
    and the engine's wall time over them."""
    n = len(iterations)
    keep = np.unique(np.linspace(0, n - 1, min(n, MAX_ITERATIONS_KEPT)).round().astype(int)) if n else []
    return {
        "count": n,
        "wall_s": float(wall_seconds),
        "iter_s": float(sum(it.iter_latency_s for it in iterations)),
        "fields": [*BATCH_FIELDS, "iter_latency_s"],
        "iterations": [[getattr(iterations[i], f) for f in BATCH_FIELDS] + [iterations[i].iter_latency_s] for i in keep],
    }


REPLICA_SLOWDOWN_BOUNDS = (1.0, 2.0)


def replica_balance_payload(elapsed_s: Sequence[float]) -> dict[str, Any]:
    """Run seconds of each replica of one DP launch (engine loaded to its last row)."""
    return {"dp": len(elapsed_s), "elapsed_s": [round(float(e), 4) for e in elapsed_s]}


def slowest_over_mean(payload: dict[str, Any]) -> float | None:
    elapsed = [float(e) for e in payload.get("elapsed_s", [])]
    if len(elapsed) < 2 or min(elapsed) <= 0:
        return None
    return max(elapsed) / float(np.mean(elapsed))


def engine_limits_payload(loaded: Loaded, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "max_model_len": loaded.max_model_len,
        "max_num_seqs": loaded.max_num_seqs,
        "max_num_batched_tokens": loaded.max_num_batched_tokens,
        "block_size": loaded.block_size,
        "kv_cache_blocks": loaded.kv_cache_blocks,
        "options": options,
    }


def predicted_seconds(payload: dict[str, Any], latency) -> float:
    """What `latency` predicts for the observation's iterations (scaled from the sample to the
    true count)."""
    from costmodel.interface import Batch

    rows = payload.get("iterations") or []
    if not rows:
        return 0.0
    total = sum(latency.iteration_time(Batch(int(r[0]), int(r[1]), float(r[2]), int(r[3]), int(r[4]), int(r[5])))
                for r in rows)
    return total * payload["count"] / len(rows)


def pooled_factor(pairs: Iterable[tuple[float, float]]) -> float | None:
    """Measured over predicted seconds, pooled over (measured, predicted) pairs and bounded;
    None without data."""
    wall = pred = 0.0
    for w, p in pairs:
        wall += w
        pred += p
    if pred <= 0 or wall <= 0:
        return None
    return float(np.clip(wall / pred, *FACTOR_BOUNDS))


def usable(payload: dict[str, Any]) -> bool:
    return payload.get("count", 0) >= MIN_ITERATIONS and payload.get("wall_s", 0) > 0


@dataclasses.dataclass(frozen=True)
class ScaledLatency:
    """A latency model whose every answer is multiplied by `factor`."""

    base: Any
    factor: float

    @property
    def kind(self) -> str:
        return getattr(self.base, "kind", "?")

    @property
    def source(self) -> str:
        return f"{getattr(self.base, 'source', '?')} x observed {self.factor:.3f}"

    def iteration_time(self, batch) -> float:
        return self.base.iteration_time(batch) * self.factor

    def decode_run_time(self, decode_seqs: int, decode_context: int, num_iterations: int) -> float:
        return self.base.decode_run_time(decode_seqs, decode_context, num_iterations) * self.factor


class Observations:
    """Reads stored observations for the planner (cached per store row: they never change)."""

    def __init__(self, store, device_name: str) -> None:
        self.store = store
        self.device = device_name
        self._predicted: dict[tuple[int, str], float] = {}

    def output_lengths(self, model: str, exclude_run: str | None = None) -> tuple[list[int], list[bool]]:
        lengths: list[int] = []
        censored: list[bool] = []
        for obs in reversed(self.store.observations(model, "output_lengths")):
            if exclude_run is not None and obs.app_run_id == exclude_run:
                continue
            lengths.extend(obs.payload.get("lengths", []))
            censored.extend(obs.payload.get("censored", []))
            if len(lengths) >= MAX_LENGTHS:
                break
        return lengths[:MAX_LENGTHS], censored[:MAX_LENGTHS]

    def prompt_tokens_per_output_token(self, model: str) -> float | None:
        """Tokens a downstream prompt spends per generated token of `model`, pooled over the
        latest observations (bounded: a few odd texts must not swing a plan)."""
        stats = self.store.observations(model, "retokenized")[-LATEST_OBSERVATIONS:]
        generated = sum(o.payload.get("generated", 0) for o in stats)
        if generated <= 0:
            return None
        ratio = sum(o.payload.get("retokenized", 0) for o in stats) / generated
        return float(min(max(ratio, RATIO_BOUNDS[0]), RATIO_BOUNDS[1]))

    def latency_factor(self, model: str, tp: int, latency) -> float | None:
        """Observed wall time over what `latency` predicts for the same iterations."""
        stats = self.store.observations(model, "latency", device=self.device, tp=tp)[-LATEST_OBSERVATIONS:]
        identity = f"{getattr(latency, 'kind', '')}|{getattr(latency, 'source', '')}"
        pairs = []
        for obs in stats:
            if not usable(obs.payload):
                continue
            key = (obs.id, identity)
            if key not in self._predicted:
                self._predicted[key] = predicted_seconds(obs.payload, latency)
            pairs.append((obs.payload["wall_s"], self._predicted[key]))
        return pooled_factor(pairs)

    def replica_slowdowns(self) -> dict[int, float]:
        """By DP width: how much later than the replicas' mean the slowest replica ends on this
        device, the median over the latest DP launches of that width, of any model (widths
        never seen are absent: 1.0). Identical GPUs stay near 1; CPU cores shared with the
        runner and the system do not."""
        by_dp: dict[int, list[float]] = {}
        for obs in self.store.observations(None, "replica_balance", device=self.device):
            ratio = slowest_over_mean(obs.payload)
            if ratio is not None:
                by_dp.setdefault(int(obs.payload["dp"]), []).append(ratio)
        return {dp: float(np.clip(np.median(r[-LATEST_OBSERVATIONS:]), *REPLICA_SLOWDOWN_BOUNDS))
                for dp, r in by_dp.items()}

    def load_seconds(self, model: str, tp: int) -> float | None:
        """Median start-up of the latest engines of this model and TP on this device."""
        stats = self.store.observations(model, "load", device=self.device, tp=tp)[-LATEST_OBSERVATIONS:]
        seconds = [float(o.payload["seconds"]) for o in stats if o.payload.get("seconds", 0) > 0]
        return float(np.median(seconds)) if seconds else None

    def engine_limits(self, model: str, tp: int, options: dict[str, Any]) -> dict[str, Any] | None:
        """The latest limits an engine of this model, TP and options reported on this device."""
        for obs in reversed(self.store.observations(model, "engine_limits", device=self.device, tp=tp)):
            if obs.payload.get("options") == options:
                return obs.payload
        return None


def runtime_coster(
    app,
    resolved,
    node_spec,
    state,
    observations: Observations,
    engine_options: Callable[[str], dict[str, Any]],
    kv_bytes: Callable[[str], int],
    *,
    seed: int = 0,
):
    """The planner's coster for `app` as the runtime will run it: a node may take over the
    engine a finished node of the same model left (runtime/warm.py), latency corrected per
    (model, TP) by what was observed on this device,
    start-up as observed here when it was, and
    on CPU the engine limits the worker's engines have (block size 128, the KV cache the
    runtime gives them, or what an engine of the same options reported when it loaded).

    engine_options(node) -> the worker options (as a dict) a node's engines get;
    kv_bytes(node) -> its KV cache in bytes on CPU."""
    from costmodel.latency import latency_model_for
    from costmodel.models import load_model_spec
    from costmodel.startup import load_seconds as default_load

    from samullm.costing import build_coster
    from samullm.runtime.jobs import CPU_BLOCK_SIZE

    device = node_spec.devices[0]
    model_of_spec = {}
    for node in app.nodes:
        model_of_spec.setdefault(load_model_spec(node.model).name, node.model)

    def latency_for(spec, tp, dev):
        base = latency_model_for(spec, tp, dev)
        factor = observations.latency_factor(model_of_spec.get(spec.name, spec.name), tp, base)
        return base if factor is None else ScaledLatency(base, factor)

    def load_for(spec, tp, dev):
        seen = observations.load_seconds(model_of_spec.get(spec.name, spec.name), tp)
        return seen if seen is not None else default_load(spec, tp, dev)

    slowdowns = observations.replica_slowdowns()  # read once per plan
    coster = build_coster(app, node_spec, state, seed=seed, resolved=resolved, latency_for=latency_for,
                          load_for=load_for, reuse_engines=True, replica_slowdown=lambda dp: slowdowns.get(dp, 1.0))
    if device.kind != "cpu":
        return coster
    for node in app.nodes:
        mc = coster.models[node.name]
        spec, options, kv = mc.spec, engine_options(node.name), kv_bytes(node.name)
        base_config = mc.engine_config
        limits = {tp: observations.engine_limits(node.model, tp, options) for tp in list(mc.kv_blocks)}

        def config(tp, base_config=base_config, limits=limits):
            seen = limits.get(tp)
            cfg = base_config(tp)
            if seen is None:
                return dataclasses.replace(cfg, block_size=CPU_BLOCK_SIZE)
            return dataclasses.replace(
                cfg, block_size=seen["block_size"], max_num_seqs=seen["max_num_seqs"],
                max_num_batched_tokens=seen["max_num_batched_tokens"], max_model_len=seen["max_model_len"],
            )

        mc.engine_config = config
        for tp in list(mc.kv_blocks):
            seen = limits.get(tp)
            if seen is not None and seen.get("kv_cache_blocks"):
                mc.kv_blocks[tp] = int(seen["kv_cache_blocks"])
            else:
                mc.kv_blocks[tp] = max(1, kv // (spec.kv_bytes_per_token(tp) * CPU_BLOCK_SIZE))
    return coster
