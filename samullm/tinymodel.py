"""Random-weight Llama-style models with a locally trained tokenizer, made in seconds offline.

They let the whole system run for real on vLLM without downloading weights: the text they
generate is gibberish, but the engine, its batching and its timings are real. Output lengths are
imposed with `ignore_eos` and per-request `max_tokens`.

The presets differ in per-token cost (layers x hidden size) so that planning choices matter,
while each stays fast enough on one CPU core. Head size is 64 in every preset: vLLM's CPU
attention refuses 16 and accepts 64.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from samullm.errors import UserInputError

# vLLM 0.32 CPUAttentionBackend.get_supported_head_sizes() (16 is refused).
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>")  # ids 0..3 in the trained vocabulary

# Written beside the model so that a directory can be recognised and compared with its recipe.
RECIPE_FILE = "samullm_tiny_model.json"


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture and seed of one tiny model; every field is a command-line option."""

    layers: int = 2
    hidden: int = 128
    heads: int = 2
    kv_heads: int = 1
    intermediate: int = 384
    vocab: int = 512
    max_len: int = 2048
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def validate(self) -> None:
        """Raise UserInputError for a shape vLLM (or Llama) cannot run."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "seed" and value <= 0:
                raise UserInputError(f"tiny model: --{f.name.replace('_', '-')} must be positive, got {value}")
        if self.hidden % self.heads:
            raise UserInputError(
                f"tiny model: --hidden {self.hidden} is not a multiple of --heads {self.heads}"
            )
        if self.head_dim not in SUPPORTED_HEAD_DIMS:
            raise UserInputError(
                f"tiny model: head size hidden/heads = {self.head_dim} is not one vLLM's CPU "
                f"attention accepts ({', '.join(map(str, SUPPORTED_HEAD_DIMS))}); "
                f"e.g. use --heads {max(1, self.hidden // 64)} for head size 64"
            )
        if self.heads % self.kv_heads:
            raise UserInputError(
                f"tiny model: --heads {self.heads} is not a multiple of --kv-heads {self.kv_heads}"
            )
        if self.vocab < len(SPECIAL_TOKENS) + 256:
            raise UserInputError(
                f"tiny model: --vocab {self.vocab} is too small for a byte-level tokenizer "
                f"(need at least {len(SPECIAL_TOKENS) + 256})"
            )


# Named sizes used by tests, the demo and the benchmarks. Per-token cost grows roughly with
# layers * hidden^2; measured throughput per preset is in the worker's report.
PRESETS: dict[str, TinyModelSpec] = {
    "tiny-s": TinyModelSpec(layers=2, hidden=128, heads=2, kv_heads=1, intermediate=384),
    "tiny-m": TinyModelSpec(layers=4, hidden=256, heads=4, kv_heads=2, intermediate=768),
    "tiny-l": TinyModelSpec(layers=8, hidden=512, heads=8, kv_heads=4, intermediate=1536),
}


def preset(name: str) -> TinyModelSpec:
    """The named preset, or UserInputError listing the names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserInputError(
            f"unknown tiny model preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def training_corpus(seed: int, num_lines: int = 400) -> list[str]:
    """Pseudo-English lines (syllable words, digits, punctuation) to train the tokenizer on."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "th", "st", "pr"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
    codas = ["", "", "n", "r", "s", "t", "ng", "ck", "ll"]
    common = ["the", "a", "of", "and", "to", "in", "is", "that", "for", "it", "with", "as"]
    lines = []
    for _ in range(num_lines):
        words = []
        for _ in range(rng.randint(4, 24)):
            if rng.random() < 0.35:
                words.append(rng.choice(common))
            elif rng.random() < 0.05:
                words.append(str(rng.randint(0, 9999)))
            else:
                word = "".join(
                    rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                    for _ in range(rng.randint(1, 3))
                )
                words.append(word.capitalize() if rng.random() < 0.1 else word)
        lines.append(" ".join(words) + rng.choice([".", ".", "?", "!", ",", ":"]))
    return lines


def _train_tokenizer(spec: TinyModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(spec.seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=spec.max_len,
    )


def make_tiny_model(out_dir: str | Path, spec: TinyModelSpec) -> Path:
    """Write a random-weight Llama model (safetensors, bfloat16) and its tokenizer to out_dir.

    Deterministic: the same spec (seed included) gives the same weights and vocabulary.
    """
    spec.validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"tiny model: {out} exists and is not a directory")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(spec)
    config = LlamaConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / RECIPE_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def read_recipe(model_dir: str | Path) -> TinyModelSpec | None:
    """The spec a directory was made from, or None if it is not a tiny model."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    return TinyModelSpec(**json.loads(path.read_text()))


def ensure_tiny_model(out_dir: str | Path, spec: TinyModelSpec) -> Path:
    """Make the model unless out_dir already holds one made from the same spec.

    Safe when several processes ask at once: each builds in its own temporary sibling
    directory and renames it into place; the recipe file is written last, so a directory with
    a matching recipe is complete.
    """
    out = Path(out_dir)
    if read_recipe(out) == spec:
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny_model(tmp, spec)
    if out.exists() and read_recipe(out) != spec:
        shutil.rmtree(out)  # made from another recipe: replace it
    try:
        os.replace(tmp, out)
    except OSError:  # another process put a complete one there first
        shutil.rmtree(tmp, ignore_errors=True)
        if read_recipe(out) != spec:
            raise
    return out


def default_cache_dir() -> Path:
    """Where presets are made once and reused: $SAMULLM_CACHE_DIR/models, else
    .samullm/cache/models under the repository root (git-ignored)."""
    root = os.environ.get("SAMULLM_CACHE_DIR")
    base = Path(root) if root else Path(__file__).resolve().parent.parent / ".samullm" / "cache"
    return base / "models"


def cached_preset(name: str, cache_dir: str | Path | None = None) -> Path:
    """The directory of preset `name`, made on first use."""
    spec = preset(name)
    return ensure_tiny_model(Path(cache_dir or default_cache_dir()) / name, spec)
