"""`samullm bench overhead`: one node through SamuLLM vs plain `vllm.LLM.generate`.

The same requests (text prompts of trace-shaped lengths, one max_tokens with ignore_eos) run on
the same device three ways, each in its own processes, the repetitions interleaved:
- plain: a subprocess (`python -m samullm.bench.overhead --plain SPEC OUT`) bound to the same
  cores the way the engine worker binds itself (samullm.worker.main.bind_this_process: the
  OpenMP/vLLM core binding, CPU affinity, engine core in-process), with the worker's engine
  arguments (samullm.worker.engine.engine_kwargs), one warm-up request, then ONE
  `LLM.generate(prompts, params)` call;
- worker: `samullm.worker.run_job` with the same job (the engine worker: per-step results
  fsynced, iteration log, events);
- runner: a one-node application with its plan pinned to the same devices, registered with an
  in-process `samullm.runner.Runner` (planning, launch, result collection, column file).

Three ratios (SamuLLM / plain), each over the means of the repetitions; "ratio" is the headline:
- "ratio": generation only, engine loaded -> last result written. Plain: the generate() call
  (after a warm-up request, as the worker's load has one). Worker and runner: the worker's
  `finished` event's elapsed time (the runner's from the events it stores).
- "ratio_results": engine loaded -> results available to the caller. The same as generation
  for plain and worker; for the runner, up to the node being done (its worker shut down, the
  column file written).
- "ratio_end_to_end": requests handed over -> all results, engine start included. Plain:
  subprocess spawn to exit. Worker: `run_job` call to return. Runner: `register` to the end of
  the run.
Other processes only slow runs down, so "ratio_fastest" (fastest generation over fastest) is
beside them as the shared machine's best stand-in for undisturbed runs.
Final JSON line: {"ratio", "ratio_results", "ratio_end_to_end", "ratio_fastest", "via",
"figures"} ("via": whose figures are the top-level ones: runner when it ran, else worker).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from costmodel.hardware import resolve_node
from samullm.bench.accuracy import scaled_trace, wide_console
from samullm.calibrate import resolve_model
from samullm.devices import DeviceSet, resolve_device_set
from samullm.errors import UserInputError
from samullm.worker import JobSpec, Row, SamplingSpec, run_job
from samullm.worker.messages import EngineOptions

NAME = "overhead"
HELP = "one node through SamuLLM (runner or engine worker) vs plain vllm.LLM.generate"
GiB = 1 << 30
CPU_DTYPE = "bfloat16"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-s", help="tiny preset or model directory (default tiny-s)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=128, help="output tokens of every request")
    parser.add_argument("--trace", default="sharegpt", help="trace whose (scaled) prompt lengths are used")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--via", choices=("runner", "worker", "both"), default="both",
                        help="SamuLLM's side: through the runner, the bare engine worker, or both")
    parser.add_argument("--devices", default="cpu", help="cpu | gpu | node file (default cpu)")
    parser.add_argument("--kv-cache-gib", type=float, default=0.25,
                        help="CPU KV cache per engine rank (default: the runner's 256 MiB)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--workdir", default=None, help="where runs keep their files (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)


# ---- requests ----------------------------------------------------------------------------------

def text_prompts(model_dir: Path, lengths, limit: int, seed: int) -> list[str]:
    """Pseudo-English texts of the given token counts under the model's own tokenizer (every
    side tokenises the same texts, so the requests are the same), none above `limit` tokens."""
    from tokenizers import Tokenizer

    from samullm.tinymodel import training_corpus

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserInputError(f"{model_dir}: no tokenizer.json to make prompts with")
    tokenizer = Tokenizer.from_file(str(path))
    lines = training_corpus(seed, num_lines=2000)
    rng = np.random.default_rng(seed)
    prompts = []
    for n in lengths:
        n = int(min(n, limit))
        words: list[str] = []
        while len(tokenizer.encode(" ".join(words)).ids) < n:
            words += lines[int(rng.integers(len(lines)))].split()
        text = tokenizer.decode(tokenizer.encode(" ".join(words)).ids[:n])
        while len(tokenizer.encode(text).ids) > limit:  # a cut may re-tokenise longer
            text = text[:-1]
        prompts.append(text)
    return prompts


def make_job(model_dir: Path, tp: int, devices: DeviceSet, prompts: list[str], max_tokens: int,
             engine: EngineOptions, workdir: Path) -> JobSpec:
    return JobSpec(
        model=str(model_dir), tensor_parallel_size=tp, device_kind=devices.kind,
        device_ids=list(devices.device_ids[:tp]),
        device_cores=[list(c) for c in devices.device_cores] if devices.device_cores else None,
        engine=engine, sampling=SamplingSpec(max_tokens=max_tokens, ignore_eos=True),
        rows=[Row(row_id=f"r{i}", prompt=p) for i, p in enumerate(prompts)],
        result_path=str((workdir / "results.jsonl").resolve()),
        iteration_log_path=str((workdir / "iterations.jsonl").resolve()))


# ---- the three sides ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    generation_s: float  # engine loaded -> last result written (plain: the generate() call)
    end_to_end_s: float  # requests handed over -> all results (engine start included)
    output_tokens: int
    results_s: float  # engine loaded -> results available to the caller (runner: node done)


def run_plain(job: JobSpec, workdir: Path, timeout: float = 3600) -> Timing:
    workdir.mkdir(parents=True, exist_ok=True)
    spec, out = workdir / "plain_job.json", workdir / "plain_result.json"
    spec.write_text(job.model_dump_json())
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    with (workdir / "plain.log").open("wb") as log:
        code = subprocess.run([sys.executable, "-m", "samullm.bench.overhead", "--plain", str(spec), str(out)],
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    end_to_end = time.perf_counter() - started
    if code != 0 or not out.is_file():
        raise UserInputError(f"plain vLLM run failed (exit {code}); log: {workdir / 'plain.log'}")
    result = json.loads(out.read_text())
    return Timing(result["generate_s"], end_to_end, result["output_tokens"], result["generate_s"])


def run_worker(job: JobSpec, workdir: Path, timeout: float = 3600) -> Timing:
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("results.jsonl", "iterations.jsonl"):
        (workdir / stale).unlink(missing_ok=True)
    started = time.perf_counter()
    outcome = run_job(job, workdir, timeout=timeout)
    end_to_end = time.perf_counter() - started
    if outcome.terminal is None or outcome.terminal.event != "finished":
        detail = getattr(outcome.terminal, "message", None) or f"exit code {outcome.returncode}"
        raise UserInputError(f"engine worker run failed: {detail} (log: {workdir / 'worker.log'})")
    elapsed = outcome.terminal.elapsed_s
    return Timing(elapsed, end_to_end, outcome.terminal.output_tokens, elapsed)


def runner_application(model_dir: Path, tp: int, devices: DeviceSet, prompts: list[str],
                       max_tokens: int, engine: EngineOptions) -> dict:
    """One node over the prompts, its plan pinned to the devices the other sides use."""
    return {
        "name": "overhead",
        "dataset": {"rows": [{"prompt": p} for p in prompts]},
        "nodes": [{
            "name": "gen", "model": str(model_dir), "prompt": "{{ prompt }}",
            "sampling": {"max_tokens": max_tokens, "ignore_eos": True},
            "engine": {"max_model_len": engine.max_model_len, "dtype": engine.dtype,
                       "extra": {"kv_cache_memory_bytes": engine.kv_cache_memory_bytes}
                       if engine.kv_cache_memory_bytes else {}},
            "plan": {"tp": tp, "devices": list(devices.device_ids[:tp])},
        }],
    }


def run_runner(app: dict, devices: DeviceSet, node_spec, workdir: Path, run_id: str,
               timeout: float = 3600) -> Timing:
    """Generation: the worker's own loaded -> finished, from the events the runner stored;
    results: from its `loaded` event to the node done (worker shut down, column written)."""
    from samullm import api
    from samullm.runner import Runner, RunnerConfig

    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(RunnerConfig(devices=devices, node_spec=node_spec, home=workdir, resume=False))
    try:
        runner.start()
        started = time.perf_counter()
        runner.register(api.RegisterApplication(app_run_id=run_id, application=app), submit_all=True)
        status = runner.wait(run_id, timeout=timeout, poll_s=0.02)
        end_to_end = time.perf_counter() - started
        node = runner.node_status(run_id, "gen")
        events = [e for r in runner.store.node_runs(run_id, "gen") for e in runner.store.events(r.id)]
    finally:
        runner.shutdown()
    if status.state != "success" or node.rows_done != node.rows_total:
        raise UserInputError(f"runner run ended {status.state}: {status.error or node.error} "
                             f"({node.rows_done}/{node.rows_total} rows; home {workdir})")
    loaded = [e.payload for e in events if e.kind == "loaded"]
    finished = [e.payload for e in events if e.kind == "finished"]
    if len(loaded) != 1 or len(finished) != 1:
        raise UserInputError(f"the node ran {len(loaded)} engine launches; the comparison needs "
                             f"exactly one (home {workdir})")
    results = node.finished_at.timestamp() - loaded[0]["time"]
    return Timing(finished[0]["elapsed_s"], end_to_end, node.output_tokens, results)


# ---- the benchmark -----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    if args.repeats < 1 or args.requests < 1 or args.max_tokens < 1 or args.tp < 1:
        raise UserInputError("--repeats, --requests, --max-tokens and --tp must be positive")
    devices = resolve_device_set(args.devices)
    if args.tp > len(devices.device_ids):
        raise UserInputError(f"--tp {args.tp} needs more than the {len(devices.device_ids)} devices")
    node_spec = resolve_node(args.devices)
    model_dir = resolve_model(args.model)
    trace, _ = scaled_trace(args.trace, args.max_model_len)
    room = args.max_model_len - args.max_tokens
    if room < 1:
        raise UserInputError(f"--max-tokens {args.max_tokens} leaves no room for prompts in "
                             f"--max-model-len {args.max_model_len}")
    lengths = np.minimum(trace.subsample(min(args.requests, len(trace)), seed=args.seed).input_lens, room)
    prompts = text_prompts(model_dir, lengths, room, args.seed)
    engine = EngineOptions(max_model_len=args.max_model_len, dtype=CPU_DTYPE if devices.kind == "cpu" else "auto",
                           kv_cache_memory_bytes=int(args.kv_cache_gib * GiB) if devices.kind == "cpu" else None)
    sides = ["plain"] + (["worker", "runner"] if args.via == "both" else [args.via])
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="samullm-overhead-"))
    console = Console(stderr=True)
    timings: dict[str, list[Timing]] = {side: [] for side in sides}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for rep in range(args.repeats):
        for side in sides:
            workdir = base / f"{side}-{rep}"
            job = make_job(model_dir, args.tp, devices, prompts, args.max_tokens, engine, workdir)
            console.print(f"run {rep + 1}/{args.repeats}: {side} ({len(prompts)} requests) ...")
            if side == "plain":
                t = run_plain(job, workdir)
            elif side == "worker":
                t = run_worker(job, workdir)
            else:
                app = runner_application(model_dir, args.tp, devices, prompts, args.max_tokens, engine)
                t = run_runner(app, devices, node_spec, workdir, f"overhead-{stamp}-{rep}")
            console.print(f"  generation {t.generation_s:.2f} s, end to end {t.end_to_end_s:.2f} s")
            timings[side].append(t)
    tokens = {side: {t.output_tokens for t in ts} for side, ts in timings.items()}
    if len(set().union(*tokens.values())) != 1:
        raise UserInputError(f"the sides generated different token counts: {tokens}")
    return summarise(timings, args, model_dir, console)


def summarise(timings: dict[str, list[Timing]], args, model_dir: Path, console: Console) -> dict:
    def mean(side: str, field: str) -> float:
        return float(np.mean([getattr(t, field) for t in timings[side]]))

    def fastest(side: str, field: str) -> float:
        return float(np.min([getattr(t, field) for t in timings[side]]))

    figures = {side: {"generation_s": [round(t.generation_s, 3) for t in ts],
                      "results_s": [round(t.results_s, 3) for t in ts],
                      "end_to_end_s": [round(t.end_to_end_s, 3) for t in ts]}
               for side, ts in timings.items()}
    table = Table(title=f"bench overhead: {args.requests} requests x {args.max_tokens} tokens, "
                        f"{model_dir.name} TP{args.tp}")
    for column in ("side", "generation s", "ratio", "results s", "ratio", "end to end s", "ratio"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side in timings:
        gen, e2e = mean(side, "generation_s"), mean(side, "end_to_end_s")
        figures[side]["ratio"] = round(gen / mean("plain", "generation_s"), 4)
        figures[side]["ratio_results"] = round(mean(side, "results_s") / mean("plain", "results_s"), 4)
        figures[side]["ratio_end_to_end"] = round(e2e / mean("plain", "end_to_end_s"), 4)
        figures[side]["ratio_fastest"] = round(fastest(side, "generation_s") / fastest("plain", "generation_s"), 4)
        table.add_row(side, " / ".join(f"{t.generation_s:.2f}" for t in timings[side]),
                      f"{figures[side]['ratio']:.3f}",
                      " / ".join(f"{t.results_s:.2f}" for t in timings[side]),
                      f"{figures[side]['ratio_results']:.3f}",
                      " / ".join(f"{t.end_to_end_s:.2f}" for t in timings[side]),
                      f"{figures[side]['ratio_end_to_end']:.3f}")
    wide_console().print(table)
    console.print("generation: engine loaded -> last result written (plain: the generate() call); "
                  "results: engine loaded -> results available (runner: node done, its worker shut "
                  "down and column written); end to end: requests handed over -> all results "
                  "(engine start included). Timings on a shared machine are noisy.")
    via = "runner" if "runner" in timings else "worker"
    return {"ratio": figures[via]["ratio"], "ratio_results": figures[via]["ratio_results"],
            "ratio_end_to_end": figures[via]["ratio_end_to_end"],
            "ratio_fastest": figures[via]["ratio_fastest"], "via": via, "figures": figures}


# ---- the plain side's process ------------------------------------------------------------------

def plain_main(spec_path: str, out_path: str) -> int:
    """Run the job's rows with one vllm.LLM.generate call, bound like the engine worker."""
    job = JobSpec.model_validate_json(Path(spec_path).read_text())
    from samullm.worker.main import bind_this_process

    bind_this_process(job)
    t = time.perf_counter()
    from vllm import LLM, SamplingParams

    import_s = time.perf_counter() - t
    from samullm.worker.engine import engine_kwargs

    t = time.perf_counter()
    llm = LLM(**engine_kwargs(job))
    # The worker's load includes one warm-up request (a TP=2 first step costs seconds): same here.
    llm.generate([{"prompt_token_ids": list(range(4, 20))}], SamplingParams(max_tokens=2, ignore_eos=True),
                 use_tqdm=False)
    load_s = time.perf_counter() - t
    params = []
    for row in job.rows:
        s = row.sampling or job.sampling
        params.append(SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                     ignore_eos=s.ignore_eos, stop=list(s.stop) or None))
    prompts = [row.prompt if row.prompt is not None else {"prompt_token_ids": row.prompt_token_ids}
               for row in job.rows]
    t = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    generate_s = time.perf_counter() - t
    Path(out_path).write_text(json.dumps({
        "import_s": import_s, "load_s": load_s, "generate_s": generate_s, "rows": len(outputs),
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--plain":
        sys.exit(plain_main(sys.argv[2], sys.argv[3]))
    print("usage: python -m samullm.bench.overhead --plain JOB.json OUT.json", file=sys.stderr)
    sys.exit(2)
