"""What a model costs in memory, bytes moved and FLOPs, derived from its architecture figures.

A `ModelSpec` holds the figures of a Hugging Face `config.json` that time and memory depend on.
Everything per device assumes vLLM's tensor parallelism: attention heads, MLP columns and the
vocabulary are split over `tp` devices, norms are replicated, and KV heads are replicated when
there are fewer of them than devices (each device then keeps one). Biases are left out: they are
under 0.1% of any model here.

`load_model_spec` reads a local config (a directory holding `config.json`, or the file itself) or
looks a name up in a table of architecture figures: a file given by the caller, the table shipped
in `costmodel/data/model_specs.json`, then `model_configs.json` of the shared data folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from costmodel.errors import UserInputError
from costmodel.paths import package_data, shared_data

SHIPPED_SPECS = "model_specs.json"
SHARED_CONFIGS = "model_configs.json"

# Families whose MLP has three matrices (gate, up, down) with a SiLU/GELU gate.
_GATED = {
    "llama", "mistral", "mixtral", "baichuan", "aquila", "chatglm", "qwen", "qwen2", "qwen2_moe",
    "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3", "internlm", "internlm2", "yi", "deepseek",
    "deepseek_v2", "phi3", "olmo", "olmo2", "cohere", "granite", "stablelm", "exaone",
}
# Families with a plain two-matrix MLP.
_NOT_GATED = {"gpt_neox", "gptj", "mpt", "falcon", "gpt2", "opt", "bloom", "gpt_bigcode", "phi",
              "starcoder2"}
# Families that reuse the input embedding as the output projection unless the config says not.
_TIED_BY_DEFAULT = {"mpt", "gpt2", "opt", "bloom", "falcon", "gemma", "gemma2", "gemma3",
                    "gpt_bigcode"}

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "half": 2, "float32": 4, "float": 4, "float8": 1,
                "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture figures of one decoder-only model (one dtype)."""

    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    gated_mlp: bool
    num_experts: int = 1
    experts_per_token: int = 1
    dtype_bytes: int = 2
    tie_word_embeddings: bool = False
    explicit_head_dim: int | None = None

    def __post_init__(self) -> None:
        for field in ("hidden_size", "num_layers", "num_attention_heads", "num_kv_heads",
                      "intermediate_size", "vocab_size", "max_position_embeddings",
                      "num_experts", "experts_per_token", "dtype_bytes"):
            if int(getattr(self, field)) < 1:
                raise UserInputError(f"model {self.name!r}: {field} must be a positive integer")
        if self.num_attention_heads % self.num_kv_heads:
            raise UserInputError(
                f"model {self.name!r}: {self.num_attention_heads} attention heads are not a "
                f"multiple of {self.num_kv_heads} KV heads; check its config")

    # ---- shapes -----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    def supports_tp(self, tp: int) -> bool:
        """vLLM splits attention heads evenly over TP ranks."""
        return tp >= 1 and self.num_attention_heads % tp == 0

    def heads_per_device(self, tp: int = 1) -> int:
        self._check_tp(tp)
        return self.num_attention_heads // tp

    def kv_heads_per_device(self, tp: int = 1) -> int:
        self._check_tp(tp)
        return max(1, self.num_kv_heads // tp)

    # ---- parameters -------------------------------------------------------------------------
    def _attention_params(self) -> int:
        q_and_o = 2 * self.hidden_size * self.num_attention_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        return q_and_o + k_and_v

    def _mlp_matrices(self) -> int:
        return 3 if self.gated_mlp else 2

    def _expert_params(self) -> int:
        return self._mlp_matrices() * self.hidden_size * self.intermediate_size

    def _router_params(self) -> int:
        return self.hidden_size * self.num_experts if self.num_experts > 1 else 0

    def param_count(self) -> int:
        """All weights: layers, input embedding and (unless tied) the output projection."""
        per_layer = (self._attention_params() + self.num_experts * self._expert_params()
                     + self._router_params() + 2 * self.hidden_size)
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embeddings + self.hidden_size

    def weight_bytes(self, tp: int = 1) -> int:
        """Weight bytes held by each of `tp` devices."""
        self._check_tp(tp)
        h, d = self.hidden_size, self.head_dim
        q_and_o = 2 * h * self.heads_per_device(tp) * d
        k_and_v = 2 * h * self.kv_heads_per_device(tp) * d
        mlp = self.num_experts * self._expert_params() / tp
        per_layer = q_and_o + k_and_v + mlp + self._router_params() + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) / tp
        return int(round((self.num_layers * per_layer + embeddings + h) * self.dtype_bytes))

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV-cache bytes one token occupies on each device (keys and values, every layer)."""
        return 2 * self.num_layers * self.kv_heads_per_device(tp) * self.head_dim * self.dtype_bytes

    # ---- work per iteration -----------------------------------------------------------------
    def linear_flops_per_token(self, tp: int = 1) -> float:
        """Matmul FLOPs of the transformer layers for one token on each device (2 per MAC).
        Mixture-of-experts models count only the experts a token is routed to."""
        h, d = self.hidden_size, self.head_dim
        q_and_o = 2 * h * self.heads_per_device(tp) * d
        k_and_v = 2 * h * self.kv_heads_per_device(tp) * d
        mlp = self.experts_per_token * self._expert_params() / tp
        return 2.0 * self.num_layers * (q_and_o + k_and_v + mlp + self._router_params())

    def logits_flops_per_seq(self, tp: int = 1) -> float:
        """Output projection for the one position per sequence that vLLM samples from."""
        return 2.0 * self.vocab_size * self.hidden_size / tp

    def attention_flops(self, query_key_pairs: float, tp: int = 1) -> float:
        """QK^T plus AV over `query_key_pairs` (query, key) pairs, on each device."""
        return 4.0 * self.num_layers * self.heads_per_device(tp) * self.head_dim * query_key_pairs

    def flops_per_token(self, context_len: int = 0, tp: int = 1) -> float:
        """One token's FLOPs on each device when it attends over `context_len` keys."""
        return self.linear_flops_per_token(tp) + self.attention_flops(context_len, tp)

    def decode_weight_bytes(self, num_tokens, tp: int = 1):
        """Weight bytes one iteration over `num_tokens` tokens reads on each device (a number
        or a numpy array of them). The input embedding only reads a row per token; a
        mixture-of-experts layer reads the experts its tokens are routed to (expected count,
        routing taken as uniform)."""
        h = self.hidden_size
        total = float(self.weight_bytes(tp))
        if not self.tie_word_embeddings:
            total -= self.vocab_size * h / tp * self.dtype_bytes
        if self.num_experts <= 1:
            return total + 0.0 * np.asarray(num_tokens, dtype=float) if np.ndim(num_tokens) else total
        tokens = np.maximum(np.asarray(num_tokens, dtype=float), 0.0)
        untouched = (1.0 - self.experts_per_token / self.num_experts) ** tokens
        unread = self.num_layers * self.num_experts * untouched * self._expert_params() / tp
        result = total - unread * self.dtype_bytes
        return result if np.ndim(result) else float(result)

    def moe_active_fraction(self) -> float:
        """Linear-layer FLOPs per token over the linear weights a large batch reads: 1 for a
        dense model, below 1 for a mixture of experts (each token uses few of the experts)."""
        attention = self._attention_params()
        return ((attention + self.experts_per_token * self._expert_params())
                / (attention + self.num_experts * self._expert_params()))

    def decode_bytes(self, num_seqs: int, context_tokens: int, tp: int = 1) -> float:
        """Bytes one decode step moves on each device: weights read plus KV cache read."""
        return self.decode_weight_bytes(num_seqs, tp) + self.kv_bytes_per_token(tp) * context_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _check_tp(self, tp: int) -> None:
        if not self.supports_tp(tp):
            raise UserInputError(
                f"model {self.name!r} has {self.num_attention_heads} attention heads, which "
                f"cannot be split over tensor-parallel degree {tp}; choose a divisor of "
                f"{self.num_attention_heads}")


# ---- loading ----------------------------------------------------------------------------------

def load_model_spec(name_or_path: str, configs_file: str | os.PathLike | None = None) -> ModelSpec:
    """A model's spec from a local config or a name in a table of architecture figures.

    `name_or_path`: a directory holding a Hugging Face `config.json`, the path of such a file,
    or a model name ("vicuna-13b-v1.5", or "lmsys/vicuna-13b-v1.5": the last path component
    also matches). Names are looked up in `configs_file` when given, else in the table shipped
    with the package, else in the shared data's `model_configs.json`.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise UserInputError(f"model directory {str(path)!r} has no config.json")
        return spec_from_hf_config(_read_json(config_path), name=path.name)
    if path.is_file():
        return spec_from_hf_config(_read_json(path), name=path.parent.name or path.stem)

    tables = [Path(configs_file)] if configs_file else [package_data(SHIPPED_SPECS),
                                                         shared_data(SHARED_CONFIGS)]
    searched = []
    for table_path in tables:
        if not table_path.is_file():
            if configs_file:
                raise UserInputError(f"model configs file {str(table_path)!r} does not exist")
            continue
        searched.append(str(table_path))
        models = _read_json(table_path).get("models", {})
        key = match_model_name(name_or_path, models)
        if key is not None:
            return spec_from_hf_config(models[key], name=key)
    where = ", ".join(searched) or "no table found"
    raise UserInputError(
        f"unknown model {name_or_path!r}: not a local directory with config.json, not a "
        f"config.json path, and not in the model tables ({where}); pass the model's local "
        f"directory or its config.json, or add its figures to a configs file (--configs FILE)")


def match_model_name(name: str, names) -> str | None:
    """The entry of `names` that `name` refers to: exact, then by the last path component,
    then case-insensitively. None when nothing matches."""
    names = list(names)
    if name in names:
        return name
    short = name.rstrip("/").rsplit("/", 1)[-1]
    if short in names:
        return short
    by_short = {n.rstrip("/").rsplit("/", 1)[-1].lower(): n for n in names}
    return by_short.get(short.lower())


def spec_from_hf_config(config: dict[str, Any], name: str) -> ModelSpec:
    """Build a spec from a Hugging Face config dict (or an entry of model_configs.json)."""
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers: the language model
        config = {**config["text_config"], "torch_dtype": config.get("torch_dtype")}
    arch = _architecture(config, name)
    attn_config = config.get("attn_config") if isinstance(config.get("attn_config"), dict) else {}

    hidden = _first(config, name, "hidden size", "hidden_size", "n_embd", "d_model")
    layers = _first(config, name, "layer count", "num_hidden_layers", "n_layer", "num_layers",
                    "n_layers")
    heads = _first(config, name, "attention heads", "num_attention_heads", "n_head", "n_heads",
                   "num_heads")
    kv_heads = _kv_heads(config, attn_config, heads)
    intermediate = _intermediate(config, hidden)
    vocab = _first(config, name, "vocabulary size", "padded_vocab_size", "vocab_size")
    max_pos = _first(config, name, "maximum positions", "max_position_embeddings", "n_positions",
                     "seq_length", "max_seq_len", "max_sequence_length", default=2048)
    experts = int(_pick(config, "num_local_experts", "num_experts", "n_routed_experts",
                        "moe_num_experts", default=1) or 1)
    per_token = int(_pick(config, "experts_per_token", "num_experts_per_tok", "moe_top_k", "top_k",
                          default=1) or 1)
    if experts > 1 and config.get("moe_intermediate_size"):
        intermediate = int(config["moe_intermediate_size"])
    head_dim = _pick(config, "explicit_head_dim", "head_dim", "kv_channels", default=None)
    dtype = str(_pick(config, "dtype_bytes", "torch_dtype", "dtype", default="float16"))
    dtype_bytes = int(dtype) if dtype.isdigit() else _DTYPE_BYTES.get(dtype.lower(), 2)
    tied = config.get("tie_word_embeddings")
    if tied is None:
        tied = arch in _TIED_BY_DEFAULT

    return ModelSpec(
        name=name, architecture=arch, hidden_size=int(hidden), num_layers=int(layers),
        num_attention_heads=int(heads), num_kv_heads=int(kv_heads),
        intermediate_size=int(intermediate), vocab_size=int(vocab),
        max_position_embeddings=int(max_pos), gated_mlp=_gated(config, arch, name),
        num_experts=experts, experts_per_token=min(per_token, experts), dtype_bytes=dtype_bytes,
        tie_word_embeddings=bool(tied),
        explicit_head_dim=int(head_dim) if head_dim and int(head_dim) != hidden // heads else None,
    )


def _architecture(config: dict[str, Any], name: str) -> str:
    arch = config.get("architecture") or config.get("model_type")
    if not arch and config.get("architectures"):
        arch = str(config["architectures"][0]).lower().removesuffix("forcausallm")
    if not arch:
        raise UserInputError(f"model {name!r}: config has no model_type or architecture")
    return str(arch).lower()


def _pick(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def _first(config: dict[str, Any], name: str, what: str, *keys: str, default: Any = None) -> Any:
    value = _pick(config, *keys, default=default)
    if value is None:
        raise UserInputError(
            f"model {name!r}: config gives no {what} (looked for {', '.join(keys)})")
    return value


def _kv_heads(config: dict[str, Any], attn_config: dict[str, Any], heads: int) -> int:
    if config.get("multi_query_attention") and config.get("multi_query_group_num"):
        return int(config["multi_query_group_num"])  # chatglm
    value = _pick(config, "num_key_value_heads", "num_kv_heads", "n_head_kv")
    if value is None:
        value = attn_config.get("kv_n_heads")  # mpt
    if value is None and config.get("multi_query") and not config.get("new_decoder_architecture"):
        value = 1  # falcon-7b
    return int(value or heads)


def _intermediate(config: dict[str, Any], hidden: int) -> int:
    value = _pick(config, "intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim")
    if value is None and config.get("expansion_ratio"):
        value = float(config["expansion_ratio"]) * hidden  # mpt
    return int(value or 4 * hidden)


def _gated(config: dict[str, Any], arch: str, name: str) -> bool:
    if config.get("gated_mlp") is not None:
        return bool(config["gated_mlp"])
    note = str(config.get("mlp", "")).lower()
    if "not gated" in note or "non-gated" in note:
        return False
    if "gated" in note:
        return True
    if arch in _GATED:
        return True
    if arch in _NOT_GATED:
        return False
    act = str(config.get("hidden_act") or config.get("activation_function") or "").lower()
    if act in ("silu", "swiglu", "swish"):
        return True
    if act.startswith("gelu") or act == "relu":
        return False
    raise UserInputError(
        f"model {name!r}: cannot tell whether architecture {arch!r} has a gated MLP; add "
        f"\"gated_mlp\": true or false to its config")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"cannot read JSON file {str(path)!r}: {err}") from err


def derive_model_specs(configs_file: str | os.PathLike) -> dict[str, Any]:
    """The content of costmodel/data/model_specs.json: every model of a model_configs.json
    table reduced to the figures a ModelSpec holds (checked by building each spec)."""
    source = Path(configs_file)
    models = _read_json(source).get("models", {})
    specs = {}
    for name, config in models.items():
        fields = spec_from_hf_config(config, name=name).to_dict()
        del fields["name"]
        specs[name] = fields
    return {"source": f"derived from {source.name} (public Hugging Face config.json figures)",
            "models": specs}
