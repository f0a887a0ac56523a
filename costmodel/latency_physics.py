"""Physical work of one engine iteration for a model with no profile: what the config-predicted
latency model (costmodel/latency_predict.py) multiplies by efficiency factors learned on
profiled models.

The engine is the one the A100 data was measured on (vLLM of early 2024, FP16): decode batches
of up to 256 sequences replay CUDA graphs, prefill batches and larger decode batches run eagerly
op by op, and decode attention is the paged-attention kernel of csrc/attention (one thread block
of four warps per query head and sequence, or per 512-token partition of a sequence in the split
"v2" kernel). The pieces:

  Kernels per layer. Each architecture's model code launches a known number of GPU kernels per
    decoder layer (norms, projections, rotary, cache write, attention, activation, bias adds,
    residual adds), plus two all-reduces under tensor parallelism (`kernels_per_layer`). On the
    GPU every kernel costs at least a launch-sized slot; in eager iterations the host's dispatch
    cost per op sets a floor under the whole iteration, so an eager iteration takes
    max(host dispatch, GPU work) (one prefill of one token on llama-7B at TP 4 takes as long as
    one of a hundred tokens: the host is the bottleneck).
  Linear layers. Weight bytes read (a mixture of experts reads the experts its tokens reach)
    over memory bandwidth, times a learned roofline curve over tokens (compute-equivalent
    tokens, so that devices and MoE FLOPs-per-byte ratios map onto one curve); TP all-reduce
    bytes over the link.
  Decode attention, per context token. Every query head's thread block streams the K and V of
    its sequence. With grouped-query attention the g query heads sharing a KV head are
    adjacent in the grid and run together, so the first reads the KV head from DRAM and the
    other g - 1 find it in L2: time = DRAM bytes x kv + (query-head bytes - DRAM bytes) x
    kv_l2, where kv and kv_l2 are learned per-byte efficiencies that depend on the parallelism
    each side sees. The L2 side serves every thread block, blocks = sequences x query heads
    per device; the DRAM side serves one fetch per KV head and sequence, streams = sequences
    x KV heads per device, so a grouped-query model reaches DRAM with g times fewer streams
    than its grid has blocks (for multi-head attention the two counts are equal). (The
    per-query-head cost thus falls from kv towards kv_l2 as g grows: the kernel is latency
    bound, and an L2 hit is cheaper than a DRAM read.)
  Per sequence. Each decode sequence also costs the attention grid a fixed amount of work per
    query head whatever its context (loading the query, the block table, the first KV block,
    writing the output), which scales with the query width, layers x query heads x head size
    (`width_time`). With grouped-query attention the KV reads of that work follow the stream
    above: one query head of each group reads from DRAM, the other g - 1 hit L2, so the
    decode width is priced as query width x (1/g + (1 - 1/g) x L2_TO_DRAM), the A100's L2
    costing about 0.4 of a DRAM read (`decode_width_time`). Prefill runs a flash kernel
    over contiguous tensors and keeps the plain query width.
  The longest sequence. A block walks its sequence's tokens in a chain, so the longest sequence
    adds its excess over the mean at a per-block rate that does not depend on how many heads
    there are (checked on the A100 data: 25-35 ns per token and layer at 8 to 40 heads per
    device); the split kernel cuts the chain into 512-token partitions.
  Head size. The kernel is compiled for head sizes 64, 80, 96, 112, 128 and 256 without
    padding. Each thread of a 2-thread group walks half of every key and a sixteenth of every
    value row, so registers per thread and work per token grow with the head size; beyond 128
    the kernel's occupancy falls and per-byte time grows with it. This is a prior
    (max(1, head_dim / 128) per byte, for the stream and for the longest sequence's chain),
    not learned: the profiled models mostly have 128. On the A100 data gpt-j-6b (256) streams
    at about this prior, but its longest-sequence chain is slower still (about 7x a 128-wide
    head's per token and layer, against the prior's 4x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.hardware import DeviceSpec
from costmodel.models import ModelSpec

# Largest decode batch the engine replays as a CUDA graph (vLLM <= 0.3 captured 1, 2, 4, 8, ...,
# 256 sequences); larger decode batches run eagerly.
GRAPH_MAX_SEQS = 256
# When a device has no fast link, tensor-parallel traffic goes over PCIe 4.0 x16 (one way).
PCIE_BANDWIDTH = 25e9
# Head sizes the prefill flash-attention kernels are compiled for come in steps of this.
FLASH_HEAD_STEP = 32
# Head size the attention factors are learned at (every profiled dense model has it).
REFERENCE_HEAD_DIM = 128
# Cost of a KV read that hits L2 relative to one from DRAM (the A100's L2 delivers about 2.5
# times its DRAM bandwidth): the price of a grouped-query re-read when nothing better is known.
L2_TO_DRAM = 0.4

# GPU kernels one decoder layer launches in the A100 data's engine (vLLM 0.2/0.3 model code),
# all-reduces not counted; attention counts two (KV-cache write and the attention kernel).
#   llama-style (fused add+RMSNorm x2, qkv, rotary, cache, attention, o, gate_up, SiLU-mul,
#     down): 10
#   gpt_neox (LayerNorm x2, qkv+bias, rotary, cache, attention, dense, its bias add, fc1+bias,
#     GELU, fc2, its bias add, two residual adds): 14
#   gptj (one LayerNorm, qkv, rotary, cache, attention, out, fc_in+bias, GELU, fc_out, its bias
#     add, two residual adds): 12
#   chatglm (unfused RMSNorm x2, qkv+bias, rotary, cache, attention, dense, two residual adds,
#     h_to_4h, SiLU-mul, 4h_to_h): 12
#   mixtral (llama-style attention block, router, fused MoE: softmax, top-k, sum, divide, align,
#     two expert GEMMs, SiLU-mul, sum over the top-k): 17
KERNELS_PER_LAYER = {
    "llama": 10, "mistral": 10, "baichuan": 10, "qwen2": 10, "qwen": 10, "yi": 10,
    "internlm": 10, "internlm2": 10, "aquila": 10, "deepseek": 10, "gemma": 10, "olmo": 10,
    "stablelm": 12, "gpt_neox": 14, "gptj": 12, "chatglm": 12, "mpt": 11, "falcon": 12,
    "gpt2": 13, "gpt_bigcode": 13, "opt": 13, "bloom": 13, "phi": 12, "starcoder2": 13,
    "mixtral": 17, "qwen2_moe": 18, "deepseek_v2": 18,
}
# Unknown families: a gated MLP usually comes with the llama-style fused norms; a plain MLP with
# biases and unfused residual adds.
_DEFAULT_GATED, _DEFAULT_PLAIN, _MOE_EXTRA = 10, 13, 7


def kernels_per_layer(spec: ModelSpec) -> int:
    """GPU kernels per decoder layer, all-reduces not counted (see KERNELS_PER_LAYER)."""
    known = KERNELS_PER_LAYER.get(spec.architecture)
    if known is not None:
        return known
    base = _DEFAULT_GATED if spec.gated_mlp else _DEFAULT_PLAIN
    return base + (_MOE_EXTRA if spec.num_experts > 1 else 0)


def head_width(head_dim: int) -> float:
    """Per-byte slowdown of the decode attention kernel for heads wider than 128 (prior)."""
    return max(head_dim / REFERENCE_HEAD_DIM, 1.0)


@dataclass(frozen=True)
class EnginePhysics:
    """Physical quantities of one (model, TP degree, device), in seconds or counts.

    `reference` is the device the factors were learned on: roofline curves are indexed by
    tokens scaled to its compute/bandwidth balance."""

    spec: ModelSpec
    tp: int
    device: DeviceSpec
    reference: DeviceSpec

    # ---- counts -----------------------------------------------------------------------------
    @property
    def layers(self) -> float:
        return float(self.spec.num_layers)

    @property
    def heads(self) -> int:
        return self.spec.heads_per_device(self.tp)

    @property
    def kv_heads(self) -> int:
        return self.spec.kv_heads_per_device(self.tp)

    @property
    def allreduces_per_layer(self) -> int:
        return 2 if self.tp > 1 else 0

    @property
    def gpu_kernels(self) -> float:
        """Kernels of one iteration's decoder layers (all-reduces apart)."""
        return self.layers * kernels_per_layer(self.spec)

    @property
    def allreduces(self) -> float:
        return self.layers * self.allreduces_per_layer

    @property
    def host_ops(self) -> float:
        """Ops the host dispatches in an eager iteration's decoder layers."""
        return self.gpu_kernels + self.allreduces

    # ---- linear layers ----------------------------------------------------------------------
    def weight_time(self, n) -> np.ndarray:
        """Weight bytes an iteration of n tokens reads on a device, over memory bandwidth."""
        return np.asarray(self.spec.decode_weight_bytes(n, self.tp), float) / self.device.memory_bandwidth

    def equivalent_tokens(self, n) -> np.ndarray:
        """n in units of a dense FP16 model on the reference device: tokens times matmul FLOPs
        per weight byte read (relative to dense) times the device's bandwidth/FLOP ratio
        (relative to the reference), so one roofline curve serves every model and device."""
        n = np.asarray(n, dtype=float)
        spec = self.spec
        if spec.num_experts > 1:
            active = spec.linear_flops_per_token(self.tp) / 2 * spec.dtype_bytes
            read = np.asarray(spec.decode_weight_bytes(n, self.tp), float)
            read -= spec.vocab_size * spec.hidden_size / self.tp * spec.dtype_bytes
            n = n * np.minimum(active / read, 1.0)
        ref, dev = self.reference, self.device
        return n * (dev.memory_bandwidth / dev.peak_flops) / (ref.memory_bandwidth / ref.peak_flops)

    def allreduce_time(self, n) -> np.ndarray:
        """Bytes the layers' all-reduces move per device for n tokens, over the link."""
        n = np.asarray(n, dtype=float)
        if self.tp <= 1:
            return np.zeros_like(n)
        link = self.device.interconnect_bandwidth or PCIE_BANDWIDTH
        volume = self.allreduces * n * self.spec.hidden_size * self.spec.dtype_bytes
        return volume * 2 * (self.tp - 1) / self.tp / link

    @property
    def width_time(self) -> float:
        """One sequence's query width in every layer (layers x heads x head_dim on a device),
        as bytes over bandwidth: what per-sequence attention bookkeeping scales with."""
        spec = self.spec
        return (spec.num_layers * self.heads * spec.head_dim * spec.dtype_bytes
                / self.device.memory_bandwidth)

    @property
    def decode_width_time(self) -> float:
        """`width_time` in decode, where the g - 1 re-readers of each grouped-query KV head
        find it in L2: query width x (1/g + (1 - 1/g) x L2_TO_DRAM)."""
        dram = self.kv_heads / self.heads
        return self.width_time * (dram + (1.0 - dram) * L2_TO_DRAM)

    # ---- attention --------------------------------------------------------------------------
    @property
    def pair_time(self) -> float:
        """Prefill attention FLOPs of one query-key pair over peak FLOP/s. The prefill kernel
        is a tensor-core flash kernel (xformers' FlashAttention-2): its FLOP rate barely
        depends on the head size, but it is compiled for head sizes in steps of 32 and pads
        a head up to the next one."""
        spec = self.spec
        padded = -(-spec.head_dim // FLASH_HEAD_STEP) * FLASH_HEAD_STEP
        return spec.attention_flops(1.0, self.tp) * padded / spec.head_dim / self.device.peak_flops

    @property
    def head_width(self) -> float:
        return head_width(self.spec.head_dim)

    @property
    def kv_time(self) -> float:
        """DRAM side of decode attention per context token: each KV head's K and V once."""
        return self.spec.kv_bytes_per_token(self.tp) * self.head_width / self.device.memory_bandwidth

    @property
    def kv_query_time(self) -> float:
        """L2-to-SM side per context token: K and V streamed once per query head."""
        spec = self.spec
        return (2 * spec.num_layers * self.heads * spec.head_dim * spec.dtype_bytes
                * self.head_width / self.device.memory_bandwidth)

    def blocks(self, decode_seqs) -> np.ndarray:
        """Thread blocks per partition of the paged-attention grid: sequences x query heads."""
        return np.asarray(decode_seqs, dtype=float) * self.heads

    def kv_streams(self, decode_seqs) -> np.ndarray:
        """Distinct KV streams the grid fetches from DRAM: sequences x KV heads per device (the
        query heads sharing a KV head share its fetch)."""
        return np.asarray(decode_seqs, dtype=float) * self.kv_heads

    @property
    def block_time(self) -> float:
        """One block's share of a token in every layer (one head's K and V), over bandwidth:
        the unit of the longest sequence's chain."""
        spec = self.spec
        return (spec.num_layers * spec.head_dim * 2 * spec.dtype_bytes * self.head_width
                / self.device.memory_bandwidth)
