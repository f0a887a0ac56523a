"""`samullm make-tiny-model DIR`: a random-weight Llama model and tokenizer vLLM can load."""

from __future__ import annotations

import argparse
import dataclasses
import json

from samullm.tinymodel import PRESETS, TinyModelSpec, make_tiny_model, preset

_SIZE_OPTIONS = {
    "layers": "transformer layers",
    "hidden": "hidden size",
    "heads": "attention heads (hidden/heads must be a head size vLLM's CPU backend accepts, e.g. 64)",
    "kv_heads": "key/value heads (grouped-query attention; divides --heads)",
    "intermediate": "MLP intermediate size",
    "vocab": "tokenizer and embedding vocabulary size (at least 260)",
    "max_len": "maximum positions (context length)",
    "seed": "seed of weights and tokenizer corpus",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny-model",
        help="write a random-weight Llama model with a local tokenizer (no downloads)",
        description=(
            "Write a random-weight Llama-style model (safetensors) and a byte-level BPE tokenizer "
            "trained locally to DIR. Start from --preset (default tiny-s) and override any size."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="output directory")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny-s", help="starting sizes")
    for name, help_text in _SIZE_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None, help=help_text)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in _SIZE_OPTIONS if getattr(args, name) is not None}
    spec: TinyModelSpec = dataclasses.replace(preset(args.preset), **overrides)
    out = make_tiny_model(args.dir, spec)
    print(json.dumps({"dir": str(out), **dataclasses.asdict(spec)}))
    return 0
