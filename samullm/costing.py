"""The planner's view of the cost model: how long node N with plan P takes on some of its requests.

`Coster` is the protocol every search (greedy planner, baselines, exhaustive optimum, the
benchmark's truth executor) asks; `SimulationCoster` answers it by sampling-then-simulation
with the cost model (`costmodel`), memoised on (node, plan, request set, sample). Tests answer
it with latencies computable on paper.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from samullm.errors import UserInputError
from samullm.plans import ExecPlan, Replicas, Topology, enumerate_plans


class Coster(Protocol):
    topology: Topology

    def nodes(self) -> list[str]:
        """Node names in a topological order."""
        ...

    def upstream(self, node: str) -> list[str]: ...

    def engine_key(self, node: str) -> str:
        """Nodes with equal keys can share a loaded engine (same model and engine options)."""
        ...

    def model(self, node: str) -> str: ...

    def weight_bytes(self, node: str) -> int:
        """All weights of the node's model (the largest-first baseline orders by it)."""
        ...

    def plans(self, node: str) -> list[ExecPlan]:
        """Feasible plans (memory fits, TP placeable); one if the user pinned it."""
        ...

    def pinned_replicas(self, node: str) -> Replicas | None: ...

    def num_requests(self, node: str, sample: int) -> int: ...

    def work(self, node: str, sample: int) -> np.ndarray:
        """Per-request work weights (tokens processed); the greedy's measure of progress."""
        ...

    def run_times(self, node: str, plan: ExecPlan, requests: np.ndarray, sample: int) -> np.ndarray:
        """Seconds from the end of engine load to each request's finish, running exactly the
        requests `requests` (indices into the node's list) from an empty engine."""
        ...

    def load_seconds(self, node: str, plan: ExecPlan) -> float: ...


# --- the cost model's answer -------------------------------------------------------------------

MIN_SUBSAMPLE = 300  # smallest subsample the search simulates for one replica



@dataclass
class ModelCosts:
    """What the cost model knows of one node's model on this node's devices."""

    spec: object  # costmodel.models.ModelSpec
    device: object  # costmodel.hardware.DeviceSpec
    max_model_len: int
    engine_config: Callable[[int], object]  # tp -> costmodel EngineConfig
    latency: Callable[[int], object]  # tp -> LatencyModel
    load: Callable[[int], float]  # tp -> seconds
    kv_blocks: dict[int, int] = field(default_factory=dict)  # tp -> blocks (feasible TPs only)


class SimulationCoster:
    """Sampling-then-simulation answers for every node of an application, memoised.

    run_times(node, plan, requests, sample): each DP replica simulates its round-robin share of
    `requests` (in order) with the node's sampled output lengths of that sample; results are
    cached by (node, plan, sample, request set). Per-model latency corrections observed by the
    runtime scale simulated times; `replica_slowdown(dp)` (observed by the runtime: the slowest
    replica's run over the replicas' mean) stretches the times of a DP plan.

    `max_requests` (the search's shortcut): one replica's round-robin share is simulated (the
    replicas' shares are alike), on an evenly spaced subsample of at most max_requests / dp
    requests (never fewer than MIN_SUBSAMPLE), and its times stretched by the share's size over
    the subsample's; each request takes the stretched finish time of the subsample member at
    its place. Offline runs of hundreds of requests and more spend nearly all their time in
    steady-state batches, so run time is close to linear in the request count (checked in
    tests/test_costing.py). Final estimates simulate every request of every replica.
    """

    def __init__(
        self,
        app,
        workloads,
        topology: Topology,
        models: dict[str, ModelCosts],
        latency_scale: dict[str, float] | None = None,
        max_requests: int | None = None,
        max_tp_factor: int | None = 2,
        reuse_engines: bool = True,
        replica_slowdown: Callable[[int], float] | None = None,
    ) -> None:
        self.app = app
        self.workloads = workloads
        self.topology = topology
        self.models = models
        self.latency_scale = latency_scale or {}
        self.max_requests = max_requests
        self.max_tp_factor = max_tp_factor
        self.reuse_engines = reuse_engines
        self.replica_slowdown = replica_slowdown
        self._order = app.topological_order()
        self._upstream = {n: app.upstream(n) for n in self._order}
        self._cache: dict[tuple, np.ndarray] = {}
        self._plans: dict[str, list[ExecPlan]] = {}
        self.simulations = 0
        self.simulated_requests = 0
        for name in self._order:
            self._plans[name] = self._feasible(name)

    def with_max_requests(self, max_requests: int | None) -> SimulationCoster:
        """The same application and costs with another subsampling limit (its own cache)."""
        other = copy.copy(self)
        other.max_requests = max_requests
        other._cache = {}
        other.simulations = other.simulated_requests = 0
        return other

    # structure
    def nodes(self) -> list[str]:
        return list(self._order)

    def upstream(self, node: str) -> list[str]:
        return self._upstream[node]

    def model(self, node: str) -> str:
        return self.app.node(node).model

    def engine_key(self, node: str) -> str:
        n = self.app.node(node)
        if not self.reuse_engines:
            return f"node:{node}"  # no two nodes share an engine
        return f"{n.model}|{n.engine.model_dump_json()}"

    def weight_bytes(self, node: str) -> int:
        return int(self.models[node].spec.weight_bytes(1))

    def _feasible(self, node: str) -> list[ExecPlan]:
        mc = self.models[node]
        pinned = self.app.node(node).plan
        plans = [ExecPlan(pinned.tp, pinned.dp)] if pinned else enumerate_plans(self.topology.num_devices)
        ok = [p for p in plans if p.tp in mc.kv_blocks and self.topology.tp_possible(p.tp) and p.num_devices <= self.topology.num_devices]
        if pinned and not ok:
            raise UserInputError(
                f"node {node!r}: pinned plan TP{pinned.tp} x DP{pinned.dp} does not fit {self.topology.num_devices} "
                f"devices of this node (memory, TP placement or device count); remove the pin or change it"
            )
        if not ok:
            raise UserInputError(
                f"node {node!r}: model {mc.spec.name!r} fits on no device set of this node "
                f"(weights plus one max_model_len={mc.max_model_len} sequence of KV cache); "
                f"use a node with more memory or a lower max_model_len"
            )
        if not pinned and self.max_tp_factor is not None:
            # TP beyond a few times the smallest TP that fits buys latency, not throughput: for
            # offline batches DP replicas do better (no all-reduce), so those plans are skipped.
            least = min(p.tp for p in ok)
            ok = [p for p in ok if p.tp <= least * self.max_tp_factor]
        return ok

    def plans(self, node: str) -> list[ExecPlan]:
        return self._plans[node]

    def pinned_replicas(self, node: str) -> Replicas | None:
        pinned = self.app.node(node).plan
        if pinned is None or pinned.devices is None:
            return None
        d = pinned.devices
        return tuple(tuple(sorted(d[i * pinned.tp:(i + 1) * pinned.tp])) for i in range(pinned.dp))

    # requests
    def num_requests(self, node: str, sample: int) -> int:
        return self.workloads.sample(sample)[node].n

    def work(self, node: str, sample: int) -> np.ndarray:
        req = self.workloads.sample(sample)[node]
        return (req.input_lens + req.output_lens).astype(float)

    def load_seconds(self, node: str, plan: ExecPlan) -> float:
        return float(self.models[node].load(plan.tp))

    def _simulate(self, node: str, tp: int, inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        from costmodel.simulate import simulate

        if inputs.size == 0:
            return np.zeros(0)
        mc = self.models[node]
        self.simulations += 1
        self.simulated_requests += int(inputs.size)
        result = simulate(inputs, outputs, mc.latency(tp), mc.engine_config(tp), mc.kv_blocks[tp])
        return np.asarray(result.finish_times, dtype=float) * self.latency_scale.get(self.model(node), 1.0)

    def _subsampled(self, node: str, plan: ExecPlan, inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Search timing: one replica's share, subsampled, stretched to the whole set."""
        r = inputs.size
        share = np.arange(0, r, plan.dp)  # replica 0's round-robin share
        m = min(share.size, max(self.max_requests // plan.dp, MIN_SUBSAMPLE))
        pos = share[np.unique(np.linspace(0, share.size - 1, m).round().astype(np.int64))]
        sub = self._simulate(node, plan.tp, inputs[pos], outputs[pos]) * (share.size / pos.size)
        # Every replica runs like replica 0: request p is at place p // dp of its replica's share.
        bucket = np.minimum((np.arange(r) // plan.dp) * pos.size // share.size, pos.size - 1)
        return sub[bucket]

    def run_times(self, node: str, plan: ExecPlan, requests: np.ndarray, sample: int) -> np.ndarray:
        requests = np.asarray(requests, dtype=np.int64)
        key = (node, plan, sample, requests.size, zlib.crc32(requests.tobytes()))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        req = self.workloads.sample(sample)[node]
        inputs, outputs = req.input_lens[requests], req.output_lens[requests]
        times = np.zeros(requests.size)
        if self.max_requests is not None and requests.size > MIN_SUBSAMPLE:
            times = self._subsampled(node, plan, inputs, outputs)
        elif plan.dp == 1:
            times = self._simulate(node, plan.tp, inputs, outputs)
        else:
            for r in range(plan.dp):
                times[r::plan.dp] = self._simulate(node, plan.tp, inputs[r::plan.dp], outputs[r::plan.dp])
        if plan.dp > 1 and self.replica_slowdown is not None:
            # Replicas simulate alike, but the node ends with its slowest (observed by the runtime).
            times = times * self.replica_slowdown(plan.dp)
        self._cache[key] = times
        return times


def _lengths_for(app, state) -> Callable[[str], object]:
    from costmodel.lengths import combine, default_lengths

    cache: dict[str, object] = {}

    def lengths(node: str):
        n = app.node(node)
        model = n.output_lengths or n.model
        if model not in cache:
            dist = default_lengths(model)
            seen = state.observed.output_lengths.get(n.model) if state is not None else None
            if seen is not None and seen.lengths:
                dist = combine(dist, seen.lengths, seen.capped or None)
            cache[model] = dist
        return cache[model]

    return lengths


def build_coster(
    app,
    node_spec,
    state=None,
    *,
    seed: int = 0,
    max_requests: int | None = None,
    resolved=None,
    latency_for: Callable | None = None,
    load_for: Callable | None = None,
    lengths_for: Callable[[str], object] | None = None,
    policy: str = "v1",
    reuse_engines: bool = True,
    replica_slowdown: Callable[[int], float] | None = None,
) -> SimulationCoster:
    """A `SimulationCoster` for `app` on `node_spec` (a costmodel NodeSpec), after `state`.

    latency_for(spec, tp, device) / load_for(spec, tp, device) default to the cost model's
    `latency_model_for` and `load_seconds`; the benchmark's truth passes the measured-rows
    interpolator instead. Devices are taken as identical (the node's first device).
    reuse_engines: a node may take over the loaded engine a finished node of the same model,
    engine options and plan left on the same devices (the runtime must then keep that engine)."""
    from costmodel.engine_config import EngineConfig, num_kv_blocks
    from costmodel.models import load_model_spec

    from samullm.datasets import resolve
    from samullm.workloads import Workloads

    if latency_for is None:
        from costmodel.latency import latency_model_for as latency_for
    if load_for is None:
        from costmodel.startup import load_seconds as load_for
    resolved = resolved or resolve(app)
    device = node_spec.devices[0]
    topology = Topology.of(node_spec.num_devices, node_spec.interconnect_groups)
    models: dict[str, ModelCosts] = {}
    specs: dict[str, object] = {}
    for node in app.nodes:
        if node.model not in specs:
            specs[node.model] = load_model_spec(node.model)
        spec = specs[node.model]
        opts = node.engine
        max_len = opts.max_model_len or spec.max_position_embeddings
        if max_len > spec.max_position_embeddings:
            raise UserInputError(
                f"node {node.name!r}: max_model_len {max_len} exceeds {spec.name}'s {spec.max_position_embeddings} positions"
            )

        def config(tp, opts=opts, max_len=max_len):
            return EngineConfig.for_device(
                device, tp, policy=policy,
                max_num_seqs=opts.max_num_seqs, max_num_batched_tokens=opts.max_num_batched_tokens,
                gpu_memory_utilization=opts.gpu_memory_utilization, max_model_len=max_len,
            )

        blocks = {}
        for tp in (1, 2, 4, 8):
            if tp > node_spec.num_devices or not spec.supports_tp(tp):
                continue
            try:
                blocks[tp] = num_kv_blocks(spec, tp, device, config(tp))
            except UserInputError:
                continue  # weights plus one max-length sequence do not fit at this TP
        latency_cache: dict[int, object] = {}
        load_cache: dict[int, float] = {}  # load_for may read files or the store: once per TP

        def latency(tp, spec=spec, cache=latency_cache):
            if tp not in cache:
                cache[tp] = latency_for(spec, tp, device)
            return cache[tp]

        def load(tp, spec=spec, cache=load_cache):
            if tp not in cache:
                cache[tp] = float(load_for(spec, tp, device))
            return cache[tp]

        models[node.name] = ModelCosts(spec, device, max_len, config, latency, load, blocks)
    workloads = Workloads(
        resolved,
        lengths_for or _lengths_for(app, state),
        lambda n: models[n].max_model_len,
        state=state,
        seed=seed,
    )
    scale = dict(state.observed.latency_scale) if state is not None else {}
    return SimulationCoster(app, workloads, topology, models, latency_scale=scale, max_requests=max_requests,
                            reuse_engines=reuse_engines, replica_slowdown=replica_slowdown)
