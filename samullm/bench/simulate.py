"""`samullm bench simulate`: speed of the replay and accuracy of sampling-then-simulation.

Setting (the paper's): a trace's requests are split into two disjoint halves. The output-length
distribution is fitted on one half (Kaplan-Meier, outputs at the trace's cap censored); N requests
of the other half are the workload. The reference is the simulation with those requests' actual
output lengths. Two estimates of it, made without looking at those lengths:
- sampling: K samples of lengths from the fitted distribution, K simulations, their mean;
- mean length: one simulation with every output set to the distribution's mean.
Both are truncated like the real outputs (the trace's cap and max_model_len - input).

Speed: seconds per simulate() call, median over the K sampled runs and the reference run,
measured as this process's CPU time (one core; robust to other work on a shared machine; the
wall-clock median is printed beside it), and simulated iterations per CPU second.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

NAME = "simulate"
HELP = "replay speed and sampling-vs-mean-length accuracy on a trace (vicuna-13b on A100)"

DEFAULT_TRACE = "sharegpt_8k_filtered_stats_llama2_tokenizer"
TRACE_CAP = 1024  # ShareGPT outputs in this trace were capped at 1,024 tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", default=DEFAULT_TRACE,
                        help="trace CSV (path, or name in the shared traces)")
    parser.add_argument("--model", default="vicuna-13b-v1.5")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--device", default="a100-80gb")
    parser.add_argument("--requests", type=int, default=10_000, help="workload size")
    parser.add_argument("--samples", type=int, default=10, help="length samples (K)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=int, default=TRACE_CAP,
                        help="the trace's output cap (outputs at it are censored)")
    parser.add_argument("--policy", choices=("v1", "v0_padded"), default="v1")


def run(args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    from costmodel.engine import engine_for
    from costmodel.estimate import sample_output_lengths
    from costmodel.lengths import LengthDistribution
    from costmodel.requests import load_request_csv
    from costmodel.simulate import simulate
    from samullm.errors import UserInputError

    if args.samples < 1 or args.requests < 1 or args.cap < 1:
        raise UserInputError("--samples, --requests and --cap must be at least 1")
    engine = engine_for(args.model, args.tp, args.device, policy=args.policy)
    config = engine.config
    max_model_len = int(config.max_model_len)

    trace = load_request_csv(args.trace)
    if trace.output_lens is None:
        raise UserInputError(f"trace {trace.source} has no num_decode_tokens column")
    fit_half, eval_half = trace.fitting(max_model_len).split(0.5, seed=args.seed)
    if len(eval_half) < args.requests:
        raise UserInputError(f"only {len(eval_half)} requests of {trace.source} fit "
                             f"max_model_len {max_model_len} in the evaluation half; "
                             f"ask for --requests {len(eval_half)} or fewer")
    workload = eval_half.subsample(args.requests, seed=args.seed)
    lengths = LengthDistribution.from_observations(
        fit_half.output_lens, fit_half.output_lens >= args.cap,
        source=f"Kaplan-Meier on {len(fit_half)} outputs of {trace.source}")
    inputs = workload.input_lens
    caps = max_model_len - inputs

    wall: list[float] = []

    def timed(outputs: np.ndarray):
        started, started_wall = time.process_time(), time.perf_counter()
        result = simulate(inputs, outputs, engine.latency, config, engine.num_kv_blocks)
        wall.append(time.perf_counter() - started_wall)
        return result, time.process_time() - started

    actual, actual_seconds = timed(workload.output_lens)
    runs = [timed(outputs) for outputs in sample_output_lengths(
        inputs, lengths, args.cap, max_model_len, args.samples, args.seed + 1)]
    sampled_totals = np.array([r.total_time for r, _ in runs])
    mean_length = int(round(lengths.mean()))
    plugged, _ = timed(np.minimum(np.minimum(mean_length, args.cap), caps))

    cpu = [actual_seconds] + [seconds for _, seconds in runs]
    iterations = actual.num_iterations + sum(r.num_iterations for r, _ in runs)
    seconds_per_sample = statistics.median(cpu)
    iterations_per_second = iterations / sum(cpu)
    truth = actual.total_time
    sampling_error = abs(sampled_totals.mean() - truth) / truth
    mean_length_error = abs(plugged.total_time - truth) / truth

    table = Table(title=f"bench simulate: {len(workload)} requests of {trace.source}, "
                        f"{engine.spec.name} TP{engine.tp} on {engine.device.name} "
                        f"({config.policy})")
    table.add_column("run")
    table.add_column("total (s)", justify="right")
    table.add_column("error", justify="right")
    table.add_column("iterations", justify="right")
    table.add_column("preemptions", justify="right")
    table.add_row("actual output lengths", f"{truth:.1f}", "", str(actual.num_iterations),
                  str(actual.num_preemptions))
    spread = sampled_totals.std(ddof=1) if args.samples > 1 else 0.0
    table.add_row(f"sampling, mean of {args.samples}",
                  f"{sampled_totals.mean():.1f} ± {spread:.1f}",
                  f"{sampling_error:.2%}",
                  f"{np.mean([r.num_iterations for r, _ in runs]):.0f}",
                  f"{np.mean([r.num_preemptions for r, _ in runs]):.0f}")
    table.add_row(f"mean length ({mean_length} tokens)", f"{plugged.total_time:.1f}",
                  f"{mean_length_error:.2%}", str(plugged.num_iterations),
                  str(plugged.num_preemptions))
    console = Console()
    console.print(table)
    console.print(f"KV blocks {engine.num_kv_blocks} of {config.block_size} tokens, "
                  f"max_num_seqs {config.max_num_seqs}, max_num_batched_tokens "
                  f"{config.max_num_batched_tokens}; lengths: {lengths.source}")
    console.print(f"replay: {seconds_per_sample * 1000:.1f} ms CPU per simulated sample (median "
                  f"of {len(cpu)}; wall clock {statistics.median(wall[:len(cpu)]) * 1000:.1f} ms "
                  f"on this shared machine), {iterations_per_second:,.0f} simulated iterations "
                  f"per CPU second")
    return {"seconds_per_sample": round(seconds_per_sample, 4),
            "iterations_per_second": round(iterations_per_second),
            "sampling_error": round(float(sampling_error), 4),
            "mean_length_error": round(float(mean_length_error), 4)}
