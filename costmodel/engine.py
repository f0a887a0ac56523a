"""One engine as the cost model sees it: a model at a TP degree on a device, with its settings,
its KV-cache blocks, its per-iteration latency model and its start-up time.

`engine_for("vicuna-13b-v1.5", 1, "a100-80gb")` gathers them (vLLM's defaults for that device,
overridable); `simulate`/`estimate` then take `engine.latency`, `engine.config` and
`engine.num_kv_blocks`, and a plan adds `engine.load_seconds` per launch.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodel.engine_config import EngineConfig, num_kv_blocks
from costmodel.hardware import DeviceSpec, get_device_preset
from costmodel.interface import LatencyModel
from costmodel.models import ModelSpec, load_model_spec


@dataclass(frozen=True)
class Engine:
    spec: ModelSpec
    tp: int
    device: DeviceSpec
    config: EngineConfig  # resolved: max_model_len and max_num_batched_tokens set
    num_kv_blocks: int
    latency: LatencyModel
    load_seconds: float


def engine_for(model: str | ModelSpec, tp: int, device: str | DeviceSpec,
               **settings) -> Engine:
    """The engine of `model` at TP `tp` on `device` (a preset name or a DeviceSpec).
    `settings`: EngineConfig fields to override (None values are ignored)."""
    from costmodel.latency import latency_model_for
    from costmodel.startup import load_seconds

    spec = model if isinstance(model, ModelSpec) else load_model_spec(model)
    device_spec = device if isinstance(device, DeviceSpec) else get_device_preset(device)
    spec.heads_per_device(tp)  # refuses a TP degree the heads cannot be split over
    config = EngineConfig.for_device(device_spec, tp, **settings)
    config = config.resolved(spec.max_position_embeddings)
    blocks = num_kv_blocks(spec, tp, device_spec, config)
    return Engine(spec=spec, tp=tp, device=device_spec, config=config, num_kv_blocks=blocks,
                  latency=latency_model_for(spec, tp, device_spec),
                  load_seconds=float(load_seconds(spec, tp, device_spec)))
