"""From an application node and a placement to an engine worker's job.

The application's engine options (`samullm.graph.EngineOptions`, what users write) become the
worker's (`samullm.worker.EngineOptions`, what vLLM is given):

- dtype "auto": the model's own dtype on GPUs; bfloat16 on CPU (what the CPU profiles and the
  latency models for this machine were measured with).
- enforce_eager: always on CPU (vLLM's CPU graph compilation adds minutes of start-up and the
  profiles were measured eager); as given on GPUs.
- memory: on GPUs `gpu_memory_utilization` as given; on CPU that fraction would be of the
  whole machine's RAM for each engine, so the KV cache gets a fixed size instead
  (`kv_cache_memory_bytes`: `engine.extra` or the runner's default). `costs.py` gives the
  planner the same figure.
- `engine.extra` may hold only the worker options listed in `EXTRA_OPTIONS`; anything else is
  refused when the run registers (the worker runs vLLM with a fixed set of arguments).
"""

from __future__ import annotations

from collections.abc import Sequence

from samullm.devices import DeviceSet
from samullm.errors import UserInputError
from samullm.graph import Application, LLMNode
from samullm.worker.messages import EngineOptions, JobSpec, Row, SamplingSpec

EXTRA_OPTIONS = ("kv_cache_memory_bytes", "block_size", "enable_prefix_caching", "seed")
CPU_DTYPE = "bfloat16"
DEFAULT_CPU_KV_CACHE_BYTES = 256 << 20
CPU_BLOCK_SIZE = 128  # vLLM 0.32's CPU backend


def check_engine_options(app: Application) -> None:
    """Refuse engine options the worker cannot pass on, before anything runs."""
    for node in app.nodes:
        unknown = sorted(set(node.engine.extra) - set(EXTRA_OPTIONS))
        if unknown:
            raise UserInputError(
                f"node {node.name!r}: engine.extra {unknown} is not supported by SamuLLM's engine "
                f"worker; supported: {list(EXTRA_OPTIONS)}"
            )


def worker_engine_options(node: LLMNode, device_kind: str, cpu_kv_cache_bytes: int) -> EngineOptions:
    opts = node.engine
    extra = dict(opts.extra)
    cpu = device_kind == "cpu"
    fields = dict(
        max_model_len=opts.max_model_len,
        max_num_seqs=opts.max_num_seqs,
        max_num_batched_tokens=opts.max_num_batched_tokens,
        dtype=CPU_DTYPE if cpu and opts.dtype == "auto" else opts.dtype,
        enforce_eager=True if cpu else opts.enforce_eager,
    )
    if cpu:
        fields["kv_cache_memory_bytes"] = int(extra.pop("kv_cache_memory_bytes", cpu_kv_cache_bytes))
    else:
        fields["gpu_memory_utilization"] = opts.gpu_memory_utilization
    fields.update(extra)
    try:
        return EngineOptions(**fields)
    except ValueError as err:
        raise UserInputError(f"node {node.name!r}: engine options: {err}") from None


def kv_cache_bytes(node: LLMNode, cpu_kv_cache_bytes: int) -> int:
    """The KV cache an engine of this node gets on CPU."""
    return int(node.engine.extra.get("kv_cache_memory_bytes", cpu_kv_cache_bytes))


def worker_sampling(node: LLMNode) -> SamplingSpec:
    s = node.sampling
    return SamplingSpec(
        max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop),
        seed=s.seed, ignore_eos=s.ignore_eos,
    )


def make_job(
    node: LLMNode,
    tp: int,
    replica_devices: Sequence[int],
    devices: DeviceSet,
    rows: list[Row],
    result_path: str,
    iteration_log_path: str,
    cpu_kv_cache_bytes: int = DEFAULT_CPU_KV_CACHE_BYTES,
    progress_interval_s: float = 1.0,
    handoff_dir: str | None = None,
    idle_timeout_s: float = 300.0,
) -> JobSpec:
    """The job of one replica: its devices (a TP group), its rows, its part file and log; with
    `handoff_dir`, its worker keeps the engine afterwards for more rows (runtime/warm.py)."""
    return JobSpec(
        model=node.model,
        tensor_parallel_size=tp,
        device_kind=devices.kind,
        device_ids=list(replica_devices),
        device_cores=[list(c) for c in devices.device_cores] if devices.device_cores else None,
        engine=worker_engine_options(node, devices.kind, cpu_kv_cache_bytes),
        sampling=worker_sampling(node),
        rows=rows,
        result_path=result_path,
        iteration_log_path=iteration_log_path,
        progress_interval_s=progress_interval_s,
        handoff_dir=handoff_dir,
        idle_timeout_s=idle_timeout_s,
    )


def split_rows(row_ids: Sequence[str], replicas: int) -> list[list[str]]:
    """Round-robin shares of the rows, one per data-parallel replica (as the planner assumes)."""
    return [list(row_ids[i::replicas]) for i in range(replicas)]
