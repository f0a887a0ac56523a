"""`samullm simulate`: how long one model takes on a request set (sampling-then-simulation).

Output lengths are drawn from the model's shipped distribution (the generic default when it
has none); when the request file also has output lengths (a trace), the run with those actual
lengths is shown beside the estimate. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from samullm.errors import UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="estimate one model's run time on a request set (sampling then simulation)",
        description=(
            "Draw every request's output length from the model's length distribution, replay "
            "vLLM's scheduler with the model's per-iteration latency model, repeat --samples "
            "times; print the mean, spread, iterations, preemptions and engine load time."),
    )
    parser.add_argument("--model", required=True, help="model name (e.g. vicuna-13b-v1.5) or "
                        "a directory / config.json")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1)")
    parser.add_argument("--device", required=True, help="device preset, e.g. a100-80gb")
    parser.add_argument("--requests", required=True, metavar="CSV",
                        help="CSV with num_prefill_tokens (and optionally num_decode_tokens) "
                        "columns; a bare file name is also looked up in the shared traces")
    parser.add_argument("--samples", type=int, default=8, help="length samples (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="max_tokens of every request (default: up to max_model_len)")
    parser.add_argument("--num-requests", type=int, default=None,
                        help="use this many requests drawn from the file (seeded)")
    parser.add_argument("--drop-too-long", action="store_true",
                        help="drop requests that do not fit max_model_len instead of failing")
    parser.add_argument("--policy", choices=("v1", "v0_padded"), default="v1",
                        help="scheduler replayed: vLLM v1 (default) or the early-2024 padded one")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--no-chunked-prefill", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from costmodel.engine import engine_for
    from costmodel.estimate import estimate
    from costmodel.lengths import default_lengths
    from costmodel.requests import load_request_csv
    from costmodel.simulate import simulate

    if args.samples < 1:
        raise UserInputError("--samples must be at least 1")
    if args.tp < 1:
        raise UserInputError("--tp must be at least 1")
    engine = engine_for(
        args.model, args.tp, args.device, policy=args.policy, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size, gpu_memory_utilization=args.gpu_memory_utilization,
        enable_chunked_prefill=False if args.no_chunked_prefill else None)
    config = engine.config
    max_model_len = int(config.max_model_len)
    max_tokens = max_model_len if args.max_tokens is None else args.max_tokens
    if not 1 <= max_tokens <= max_model_len:
        raise UserInputError(f"--max-tokens {max_tokens} is outside 1..max_model_len "
                             f"({max_model_len}); lower it or raise --max-model-len")

    requests = load_request_csv(args.requests)
    if args.num_requests is not None:
        requests = requests.subsample(args.num_requests, args.seed)
    too_long = int(np.count_nonzero(requests.input_lens >= max_model_len))
    if too_long:
        if not args.drop_too_long:
            raise UserInputError(
                f"{too_long} of {len(requests)} requests have prompts of max_model_len "
                f"({max_model_len}) tokens or more; pass --drop-too-long to leave them out")
        requests = requests.take(np.flatnonzero(requests.input_lens < max_model_len))
    lengths = default_lengths(engine.spec.name)

    started = time.perf_counter()
    result = estimate(requests.input_lens, lengths, max_tokens, engine.latency, config,
                      engine.num_kv_blocks, samples=args.samples, seed=args.seed)
    seconds_per_sample = (time.perf_counter() - started) / args.samples

    actual = None
    if requests.output_lens is not None:
        outputs = np.minimum(requests.output_lens,
                             np.minimum(max_tokens, max_model_len - requests.input_lens))
        actual = simulate(requests.input_lens, outputs, engine.latency, config,
                          engine.num_kv_blocks)

    figures = {
        "model": engine.spec.name, "tp": engine.tp, "device": engine.device.name,
        "policy": config.policy, "requests": len(requests), "samples": result.samples,
        "num_kv_blocks": engine.num_kv_blocks,
        "mean_seconds": round(result.mean, 3), "std_seconds": round(result.std, 3),
        "p10_seconds": round(result.quantile(0.1), 3),
        "p90_seconds": round(result.quantile(0.9), 3),
        "mean_iterations": float(result.num_iterations.mean()),
        "mean_preemptions": float(result.num_preemptions.mean()),
        "load_seconds": round(engine.load_seconds, 3),
        "total_seconds": round(result.mean + engine.load_seconds, 3),
        "actual_lengths_seconds": None if actual is None else round(actual.total_time, 3),
        "seconds_per_sample": round(seconds_per_sample, 4),
    }

    table = Table(title=f"{engine.spec.name} TP{engine.tp} on {engine.device.name} "
                        f"({config.policy} scheduler)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("requests", f"{len(requests)} from {requests.source}")
    table.add_row("output lengths", lengths.source)
    table.add_row("engine", f"max_num_seqs {config.max_num_seqs}, max_num_batched_tokens "
                  f"{config.max_num_batched_tokens}, max_model_len {max_model_len}, "
                  f"{engine.num_kv_blocks} KV blocks of {config.block_size}")
    table.add_row("run time, mean ± std", f"{result.mean:.1f} ± {result.std:.1f} s "
                  f"({result.samples} samples)")
    table.add_row("run time, p10 .. p90", f"{result.quantile(0.1):.1f} .. "
                  f"{result.quantile(0.9):.1f} s")
    table.add_row("iterations (mean)", f"{result.num_iterations.mean():.0f}")
    table.add_row("preemptions (mean)", f"{result.num_preemptions.mean():.1f}")
    table.add_row("engine load", f"{engine.load_seconds:.1f} s")
    table.add_row("total with load", f"{result.mean + engine.load_seconds:.1f} s")
    if actual is not None:
        table.add_row("with the file's output lengths", f"{actual.total_time:.1f} s")
    table.add_row("simulation time per sample", f"{seconds_per_sample * 1000:.0f} ms")
    Console().print(table)
    print(json.dumps(figures))
    return 0
