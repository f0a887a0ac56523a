"""`samullm bench e2e`: an ensemble of tiny models and a judge, executed for real under SamuLLM's
plan and under each planner baseline, on this machine's devices (on a CPU host: one core each).

The application: 3-4 members of different sizes answer the same rows (prompts from a real trace),
then a judge reads every answer of a row. Every output runs to its node's `max_tokens`
(`ignore_eos`), so all methods do the same work: where a random-weight model stops on its own
depends on the batch it ran in (bfloat16 sums differ with the batch; with DP the rows' seeds
differ too), and was measured to change a node's total output by up to 3x from one plan to
another. The members differ in size and in answer length.

Fairness: every method starts with the same knowledge. A method's runner gets a fresh home (its
own store, results and checkpoints), into which the store of a *prior run* is copied first: the
same application over another sample of the trace (fewer rows), run once with a baseline's plan
before any measured run. It leaves what an installation knows after running these models once:
start-up seconds, per-iteration latency corrections and output lengths of each model (the
design's "estimates that learn"), on top of the latency calibration of this machine (`samullm
calibrate`, required). What a method observes during its own run stays in its own store, so no
method learns from another. `--prior-rows 0` skips the prior run (calibration only).

Measured makespan: from the call that registers the run (planning included) to the run's end
(the last node finished: its engines shut down, its column written). Predicted: the first plan's
makespan plus the time from that call to the plan being stored (the plan's own origin), i.e. on
the same clock. `prediction_error` is signed: (predicted - measured) / measured of SamuLLM's run
(negative: the plan was optimistic); every method's error is in `prediction_errors`.
`speedup_vs_best_baseline`: the best baseline's measured makespan over SamuLLM's (> 1: SamuLLM
was faster). With `--repeats N` each method runs N times (the order rotated each round) and the
median counts. Timings on a machine shared with other work are noisy.

Final JSON line: {"makespans", "speedup_vs_best_baseline", "prediction_error", "best_baseline",
"predicted", "prediction_errors", "rows_failed", "runs", "workdir"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from samullm.baselines import baseline_names, get_baseline
from samullm.errors import UserInputError

NAME = "e2e"
HELP = "an ensemble of tiny models + a judge executed for real: SamuLLM's plan vs each baseline"

METHODS = ("samullm", *baseline_names())
TRACE = "shared:traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
PRIOR_METHOD = "even-split"  # the prior run only gathers observations; any method would do
# Members of different sizes and output lengths, declared in the order a user might write them
# (list-scheduling baselines follow the declaration order; largest-first follows weight size).
DEFAULT_MEMBERS = "large=tiny-l:96,medium=tiny-m:96,medium2=tiny-m@1:128,small=tiny-s:512"
DEFAULT_JUDGE = "tiny-m:32"
# Tokens the judge's template adds around the prompt and answers (labels, newlines): a bound, so
# that the worst-case judge prompt is checked against the context before anything runs.
JUDGE_TEMPLATE_TOKENS = 16
JUDGE_TOKENS_PER_ANSWER = 8
# An answer's text, tokenized again inside the judge's prompt, can take more tokens than were
# generated: random-weight models emit token sequences the tokenizer would split differently
# (measured here: 1.45x median, 1.75x at most). Bound it by 2x.
RETOKENIZED_ANSWER_FACTOR = 2
GiB = 1 << 30


# ---- the application -----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """A tiny preset with a weights seed (same architecture, other weights), or a model directory."""

    preset: str | None
    seed: int = 0
    path: str | None = None

    def describe(self) -> str:
        if self.preset is None:
            return str(self.path)
        return self.preset if self.seed == 0 else f"{self.preset}@{self.seed}"


@dataclass(frozen=True)
class Member:
    name: str
    model: ModelRef
    max_tokens: int


def parse_model(text: str) -> ModelRef:
    from samullm.tinymodel import PRESETS

    name, _, seed = text.partition("@")
    if name in PRESETS:
        try:
            return ModelRef(name, int(seed) if seed else 0)
        except ValueError:
            raise UserInputError(f"model {text!r}: the weights seed after @ must be an integer") from None
    if seed:
        raise UserInputError(f"model {text!r}: @SEED applies to tiny presets only ({', '.join(PRESETS)})")
    if not Path(name).expanduser().is_dir():
        raise UserInputError(f"model {text!r} is neither a tiny preset ({', '.join(PRESETS)}) nor a model directory")
    return ModelRef(None, path=str(Path(name).expanduser().resolve()))


def _model_and_tokens(text: str, what: str) -> tuple[ModelRef, int]:
    model, sep, tokens = text.rpartition(":")
    if not sep or not model:
        raise UserInputError(f"{what} {text!r}: write MODEL:MAX_TOKENS, e.g. tiny-m:256")
    try:
        max_tokens = int(tokens)
    except ValueError:
        raise UserInputError(f"{what} {text!r}: MAX_TOKENS must be an integer") from None
    if max_tokens < 1:
        raise UserInputError(f"{what} {text!r}: MAX_TOKENS must be positive")
    return parse_model(model), max_tokens


def parse_members(text: str) -> list[Member]:
    """"name=MODEL:MAX_TOKENS,..." where MODEL is a tiny preset, PRESET@SEED, or a directory."""
    from samullm.graph import NAME_PATTERN

    members = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, sep, rest = item.partition("=")
        if not sep or not re.match(NAME_PATTERN, name) or name == "judge":
            raise UserInputError(f"--members item {item!r}: write NAME=MODEL:MAX_TOKENS with NAME an identifier "
                                 f"other than 'judge', e.g. small=tiny-s:256")
        model, max_tokens = _model_and_tokens(rest, f"--members item {name!r}")
        members.append(Member(name, model, max_tokens))
    names = [m.name for m in members]
    if len(members) < 2 or len(set(names)) != len(names):
        raise UserInputError(f"--members {text!r}: give at least two members with distinct names")
    return members


def model_dir(ref: ModelRef) -> Path:
    """The model's directory, made on first use. A preset with another weights seed lives in
    <cache>/seed<N>/<preset>: its directory is named like the preset, so the latency calibrated for
    the preset's architecture applies to it (observations are kept per directory)."""
    from samullm.tinymodel import cached_preset, default_cache_dir, ensure_tiny_model, preset

    if ref.preset is None:
        return Path(ref.path)
    if ref.seed == 0:
        return cached_preset(ref.preset)
    spec = dataclasses.replace(preset(ref.preset), seed=ref.seed)
    return ensure_tiny_model(default_cache_dir() / f"seed{ref.seed}" / ref.preset, spec)


def check_context(members: list[Member], judge_tokens: int, max_prompt_tokens: int, max_model_len: int) -> None:
    """The judge's longest possible prompt (longest trace prompt, every answer at its maximum) plus
    its own output must fit the context, or its rows would fail."""
    answers = sum(RETOKENIZED_ANSWER_FACTOR * m.max_tokens + JUDGE_TOKENS_PER_ANSWER for m in members)
    worst = max_prompt_tokens + JUDGE_TEMPLATE_TOKENS + answers + judge_tokens
    if worst > max_model_len:
        raise UserInputError(
            f"the judge's longest prompt and output take up to {worst} tokens (prompts up to "
            f"{max_prompt_tokens}, answers up to {answers} tokens once tokenized again, judge output "
            f"{judge_tokens}) but --max-model-len is {max_model_len}; lower the members' max_tokens "
            f"or --max-prompt-tokens")


def ensemble_app(members: list[Member], judge: ModelRef, judge_tokens: int, rows: int, *, seed: int = 0,
                 name: str = "e2e-ensemble", max_prompt_tokens: int = 192, max_model_len: int = 2048,
                 kv_cache_bytes: int = GiB, sampling_seed: int = 0) -> dict[str, Any]:
    """The application as JSON: members answer every row, the judge reads all their answers."""
    if rows < 1:
        raise UserInputError("--rows must be positive")
    check_context(members, judge_tokens, max_prompt_tokens, max_model_len)
    engine = {"max_model_len": max_model_len, "extra": {"kv_cache_memory_bytes": int(kv_cache_bytes)}}
    nodes = [{
        "name": m.name, "model": str(model_dir(m.model)), "prompt": "{{ prompt }}",
        "sampling": {"max_tokens": m.max_tokens, "temperature": 1.0, "seed": sampling_seed, "ignore_eos": True},
        "engine": engine,
    } for m in members]
    answers = "".join(f"Answer {i + 1}: {{{{ {m.name} }}}}\n" for i, m in enumerate(members))
    nodes.append({
        "name": "judge", "model": str(model_dir(judge)),
        "prompt": "Question: {{ prompt }}\n" + answers + "Which answer is best? Reply with its number.",
        "sampling": {"max_tokens": judge_tokens, "temperature": 0.0, "seed": sampling_seed, "ignore_eos": True},
        "engine": engine,
    })
    return {
        "name": name,
        "dataset": {"trace": {"path": TRACE, "num_rows": rows, "seed": seed, "max_prompt_tokens": max_prompt_tokens}},
        "nodes": nodes,
    }


# ---- calibration -----------------------------------------------------------------------------

def use_calibration(models: list[Path], devices: str, tps: tuple[int, ...], root: Path | None = None,
                    quick: bool = False, log=lambda message: None) -> Path:
    """Point the cost model at this machine's calibration (SAMULLM_LATENCY_DIR) after
    calibrating every (model architecture, TP) the planner may choose that is not calibrated
    yet (as `samullm calibrate` would; nothing runs when all are cached)."""
    from costmodel.hardware import resolve_node
    from costmodel.models import load_model_spec

    from samullm.calibrate import CalibrationSettings, calibrate, calibration_root, load_calibration
    from samullm.devices import resolve_device_set

    node = resolve_node(devices)
    root = Path(root).resolve() if root is not None else calibration_root()
    wanted: dict[tuple[str, int], Path] = {}  # one model per architecture: a seed is not a new shape
    for model in models:
        spec = load_model_spec(str(model))
        for tp in tps:
            if tp <= node.num_devices and spec.supports_tp(tp):
                wanted.setdefault((spec.name, tp), model)
    try:
        calibration = load_calibration(node.devices[0], root)
    except UserInputError:
        calibration = None
    missing: dict[Path, list[int]] = {}
    for (name, tp), model in wanted.items():
        try:
            if calibration is None:
                raise UserInputError("no calibration yet")
            calibration.latency(load_model_spec(str(model)), tp)
        except UserInputError:
            missing.setdefault(model, []).append(tp)
    if missing:
        log(f"calibrating under {root}: " + ", ".join(f"{m.name} TP {tps_}" for m, tps_ in missing.items()))
        device_set = resolve_device_set(devices)
        for model, model_tps in missing.items():
            calibrate([str(model)], model_tps, device_set, node.devices[0],
                      CalibrationSettings(quick=quick), root=root, log=log)
    if root != calibration_root() or not os.environ.get("SAMULLM_LATENCY_DIR"):
        os.environ["SAMULLM_LATENCY_DIR"] = str(root)
    return root


# ---- one execution ---------------------------------------------------------------------------

@dataclass
class MethodRun:
    method: str
    run_id: str
    home: str
    state: str
    error: str | None
    measured_s: float | None  # register call -> run finished
    predicted_s: float | None  # same origin: register call -> plan stored + plan v1 makespan
    predicted_std: float
    planning_s: float
    plan_versions: int
    launches: int
    rows_failed: int
    output_tokens: int
    planned_stages: str
    actual_stages: str

    @property
    def ok(self) -> bool:
        return self.state == "success" and self.measured_s is not None

    @property
    def prediction_error(self) -> float | None:
        if not self.ok or self.predicted_s is None:
            return None
        return (self.predicted_s - self.measured_s) / self.measured_s


def _plan_text(tp: int, dp: int, devices) -> str:
    shape = "" if (tp, dp) == (1, 1) else f" TP{tp}" + (f"xDP{dp}" if dp > 1 else "")
    return f"{shape}[{','.join(str(d) for d in devices)}]"


def planned_text(schedule) -> str:
    return " | ".join(", ".join(f"{n.node}{_plan_text(n.tp, n.dp, n.devices)}" for n in stage.nodes)
                      for stage in schedule.stages)


def actual_text(stages) -> str:
    return " | ".join(", ".join(f"{n.node}{_plan_text(n.tp, n.dp, n.devices)}" for n in stage.nodes)
                      for stage in stages)


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store (the backup API, not a file copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(str(source)), sqlite3.connect(str(target))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def fresh_runner(home: Path, devices: str, prior_store: Path | None):
    """A runner in an empty `home` whose store starts as a copy of `prior_store` (if given)."""
    from samullm.runner import Runner
    from samullm.runtime.config import make_config

    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    if prior_store is not None:
        copy_store(prior_store, home / "store.db")
    return Runner(make_config(devices, home=str(home), resume=False))


def execute(app: dict[str, Any], method: str, home: Path, devices: str, run_id: str, *,
            prior_store: Path | None = None, timeout: float = 1800.0, console: Console | None = None) -> MethodRun:
    """Run the application once under `method` with a fresh runner in `home` (its store a copy of
    `prior_store` when given) and measure it."""
    from samullm.api import RegisterApplication
    from samullm.runtime.status import aware

    runner = fresh_runner(home, devices, prior_store)
    error = None
    try:
        runner.start()
        called = time.time()
        runner.register(RegisterApplication(app_run_id=run_id, application=app, method=method), submit_all=True)
        status = _wait(runner, run_id, timeout, console, method)
        if status.state == "running":
            error = f"did not finish within {timeout:g} s"
            runner.cancel(run_id)
            status = runner.wait(run_id, timeout=120)
        view = runner.view(run_id)
    finally:
        runner.shutdown()
    first = view.plans[0] if view.plans else None
    created = aware(view.app.created_at).timestamp()
    finished = aware(view.app.finished_at).timestamp() if view.app.finished_at else None
    failed = [f"{n.node}: {n.error}" for n in view.nodes if n.error]
    return MethodRun(
        method=method, run_id=run_id, home=str(home), state=view.app.state,
        error=error or view.app.error or ("; ".join(failed) or None),
        measured_s=round(finished - called, 3) if finished is not None else None,
        predicted_s=round(created - called + first.schedule.makespan, 3) if first else None,
        predicted_std=round(first.schedule.makespan_std, 3) if first else 0.0,
        planning_s=round(first.planning_seconds, 3) if first else 0.0,
        plan_versions=len(view.plans),
        launches=sum(n.attempts for n in view.nodes),
        rows_failed=sum(n.rows_failed for n in view.nodes),
        output_tokens=sum(n.output_tokens for n in view.nodes),
        planned_stages=planned_text(first.schedule) if first else "",
        actual_stages=actual_text(view.stages),
    )


def _wait(runner, run_id: str, timeout: float, console: Console | None, method: str):
    """Wait for the run's end, showing its nodes' progress on `console` (stderr)."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    if console is None:
        return runner.wait(run_id, timeout=timeout, poll_s=0.2)
    with console.status(f"{method}: starting") as status_line:
        while True:
            status = runner.app_status(run_id)
            if status.state != "running" or time.monotonic() > deadline:
                return status
            nodes = runner.node_statuses(run_id)
            parts = [f"{n.node} {n.state} {n.rows_done}/{n.rows_total}" for n in nodes
                     if n.state not in ("pending", "waiting")]
            status_line.update(f"{method}: {time.monotonic() - started:.0f} s  " + ", ".join(parts))
            time.sleep(0.5)


def plan_only(app: dict[str, Any], method: str, home: Path, devices: str, run_id: str,
              prior_store: Path | None = None) -> MethodRun:
    """The plan the runtime would make for `method` (registered on a runner whose loop never
    starts: no engine runs), as a MethodRun without measurements."""
    from samullm.api import RegisterApplication

    runner = fresh_runner(home, devices, prior_store)
    try:
        runner.start(loop=False)
        called = time.time()
        runner.register(RegisterApplication(app_run_id=run_id, application=app, method=method), submit_all=True)
        view = runner.view(run_id)
        runner.cancel(run_id)
    finally:
        runner.shutdown()
    first = view.plans[0]
    from samullm.runtime.status import aware

    return MethodRun(
        method=method, run_id=run_id, home=str(home), state="planned", error=None, measured_s=None,
        predicted_s=round(aware(view.app.created_at).timestamp() - called + first.schedule.makespan, 3),
        predicted_std=round(first.schedule.makespan_std, 3), planning_s=round(first.planning_seconds, 3),
        plan_versions=1, launches=0, rows_failed=0, output_tokens=0,
        planned_stages=planned_text(first.schedule), actual_stages="",
    )


# ---- the figures -----------------------------------------------------------------------------

def summarise(runs: dict[str, list[MethodRun]]) -> dict[str, Any]:
    """Median measured and predicted makespan per method (successful runs only), SamuLLM's
    speedup over the best baseline and its signed prediction error."""
    makespans: dict[str, float | None] = {}
    predicted: dict[str, float | None] = {}
    errors: dict[str, float | None] = {}
    rows_failed: dict[str, int] = {}
    for method, method_runs in runs.items():
        rows_failed[method] = max((r.rows_failed for r in method_runs), default=0)
        ok = [r for r in method_runs if r.ok]
        makespans[method] = round(statistics.median(r.measured_s for r in ok), 3) if ok else None
        preds = [r.predicted_s for r in method_runs if r.predicted_s is not None]
        predicted[method] = round(statistics.median(preds), 3) if preds else None
        errs = [r.prediction_error for r in ok if r.prediction_error is not None]
        errors[method] = round(statistics.median(errs), 4) if errs else None
    baselines = {m: s for m, s in makespans.items() if m != "samullm" and s is not None}
    best = min(baselines, key=baselines.get) if baselines else None
    ours = makespans.get("samullm")
    speedup = round(baselines[best] / ours, 4) if best is not None and ours else None
    return {
        "makespans": makespans,
        "speedup_vs_best_baseline": speedup,
        "prediction_error": errors.get("samullm"),
        "best_baseline": best,
        "predicted": predicted,
        "prediction_errors": errors,
        "rows_failed": rows_failed,
    }


def print_tables(runs: dict[str, list[MethodRun]], figures: dict[str, Any], console: Console, title: str) -> None:
    table = Table(title=escape(title))
    for col in ("method", "measured s", "predicted s", "error", "vs SamuLLM", "plans", "launches", "stages run"):
        table.add_column(col, justify="left" if col in ("method", "stages run") else "right")
    ours = figures["makespans"].get("samullm")
    for method, method_runs in runs.items():
        measured = figures["makespans"][method]
        shown = " / ".join(f"{r.measured_s:.1f}" if r.ok else r.state for r in method_runs)
        predicted = figures["predicted"][method]
        error = figures["prediction_errors"][method]
        versus = f"{measured / ours:.3f}" if measured and ours else "-"
        last = method_runs[-1]
        stages = last.actual_stages or last.planned_stages
        table.add_row(method, shown,
                      f"{predicted:.1f}" if predicted is not None else "-",
                      f"{error:+.1%}" if error is not None else "-", versus,
                      " / ".join(str(r.plan_versions) for r in method_runs),
                      " / ".join(str(r.launches) for r in method_runs), escape(stages))
    console.print(table)
    plans = Table(title=escape("first plan of each method (stages: node[devices], with TP/DP when not TP1 on one device)"))
    plans.add_column("method")
    plans.add_column("planned stages")
    for method, method_runs in runs.items():
        plans.add_row(method, escape(method_runs[0].planned_stages))
    console.print(plans)
    for method, method_runs in runs.items():
        for r in method_runs:
            if r.error or r.rows_failed:
                console.print(f"[red]{escape(method)} ({r.run_id}): {r.state}; {escape(r.error or '')} "
                              f"{r.rows_failed} rows failed; home {escape(r.home)}[/red]")


# ---- the benchmark -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1000, help="rows every member answers (default 1000)")
    parser.add_argument("--members", default=DEFAULT_MEMBERS,
                        help="NAME=MODEL:MAX_TOKENS,... with MODEL a tiny preset, PRESET@SEED (other weights) "
                             f"or a model directory (default {DEFAULT_MEMBERS})")
    parser.add_argument("--judge", default=DEFAULT_JUDGE, help=f"MODEL:MAX_TOKENS of the judge (default {DEFAULT_JUDGE})")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated: samullm and baselines (default {','.join(METHODS)})")
    parser.add_argument("--prior-rows", type=int, default=300,
                        help="rows of the prior run whose observations every method starts with (0: none)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method, order rotated each round")
    parser.add_argument("--max-prompt-tokens", type=int, default=192, help="longest trace prompt kept")
    parser.add_argument("--max-model-len", type=int, default=2048,
                        help="context of every engine (the tiny models have 2048 positions); the judge's "
                             "longest prompt must fit (checked first)")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0,
                        help="CPU KV cache per engine (default 1.0, as `samullm calibrate` profiles)")
    parser.add_argument("--seed", type=int, default=0, help="trace sample of the measured runs (the prior uses seed+1)")
    parser.add_argument("--devices", default="cpu", help="cpu | gpu | node file (default cpu)")
    parser.add_argument("--calibration", default=None,
                        help="calibration root (default: as `samullm calibrate`); what is missing is "
                             "calibrated first")
    parser.add_argument("--quick-calibration", action="store_true",
                        help="calibrate what is missing with the profiler's quick sweep (smoke tests only)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run")
    parser.add_argument("--workdir", default=None, help="where runs keep their homes (default: a temp dir)")
    parser.add_argument("--plan-only", action="store_true",
                        help="print each method's first plan and prediction; execute nothing (the prior run "
                             "still executes unless --prior-rows 0)")


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise UserInputError(f"--methods {text!r}: give distinct names among {', '.join(METHODS)}")
    for m in methods:
        if m != "samullm":
            get_baseline(m)
    return methods


def run(args: argparse.Namespace) -> dict:
    if args.repeats < 1 or args.prior_rows < 0 or args.timeout <= 0 or args.kv_cache_gib <= 0:
        raise UserInputError("--repeats and --timeout must be positive, --prior-rows >= 0, --kv-cache-gib > 0")
    methods = parse_methods(args.methods)
    members = parse_members(args.members)
    judge, judge_tokens = _model_and_tokens(args.judge, "--judge")
    check_context(members, judge_tokens, args.max_prompt_tokens, args.max_model_len)
    from samullm.devices import resolve_device_set

    resolve_device_set(args.devices)  # a bad --devices fails before models are made
    kv = int(args.kv_cache_gib * GiB)
    make = dict(max_prompt_tokens=args.max_prompt_tokens, max_model_len=args.max_model_len, kv_cache_bytes=kv)
    app = ensemble_app(members, judge, judge_tokens, args.rows, seed=args.seed, **make)
    err = Console(stderr=True)
    root = use_calibration(sorted({Path(n["model"]) for n in app["nodes"]}), args.devices, (1, 2),
                           root=Path(args.calibration) if args.calibration else None,
                           quick=args.quick_calibration, log=err.print)
    base = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="samullm-e2e-"))
    base.mkdir(parents=True, exist_ok=True)
    (base / "app.json").write_text(json.dumps(app, indent=1) + "\n")
    err.print(f"calibration: {root}; runs under {base}; application in {base / 'app.json'}")
    stamp = time.strftime("%Y%m%dT%H%M%S")

    prior_store = None
    if args.prior_rows:
        prior_app = ensemble_app(members, judge, judge_tokens, args.prior_rows, seed=args.seed + 1,
                                 name="e2e-prior", **make)
        err.print(f"prior run: {args.prior_rows} rows under {PRIOR_METHOD} (observations every method starts with)")
        prior = execute(prior_app, PRIOR_METHOD, base / "prior", args.devices, f"prior-{stamp}",
                        timeout=args.timeout, console=err)
        if not prior.ok:
            raise UserInputError(f"the prior run ended {prior.state}: {prior.error} (home {prior.home})")
        err.print(f"  prior run: {prior.measured_s:.1f} s")
        prior_store = Path(prior.home) / "store.db"

    runs: dict[str, list[MethodRun]] = {m: [] for m in methods}
    for rep in range(1 if args.plan_only else args.repeats):
        order = methods[rep % len(methods):] + methods[:rep % len(methods)]
        for method in order:
            home = base / f"{method}-{rep}"
            run_id = f"e2e-{method}-{stamp}-{rep}"
            if args.plan_only:
                r = plan_only(app, method, home, args.devices, run_id, prior_store)
                err.print(f"{method}: predicted {r.predicted_s:.1f} s")
            else:
                err.print(f"run {rep + 1}/{args.repeats}: {method} ...")
                r = execute(app, method, home, args.devices, run_id, prior_store=prior_store,
                            timeout=args.timeout, console=err)
                err.print(f"  {method}: {r.state}, measured {r.measured_s} s, predicted {r.predicted_s} s")
            runs[method].append(r)

    figures = summarise(runs)
    if not args.plan_only and figures["makespans"].get("samullm") is None and "samullm" in methods:
        print_tables(runs, figures, Console(), _title(args, members, judge, judge_tokens))
        raise UserInputError(f"SamuLLM's run did not succeed: {runs['samullm'][-1].error} "
                             f"(home {runs['samullm'][-1].home})")
    from samullm.commands.plan import make_console

    print_tables(runs, figures, make_console(), _title(args, members, judge, judge_tokens))
    err.print("measured: register call -> run finished (planning, engine starts and shutdowns included); "
              "predicted: the first plan's makespan on the same clock; error = (predicted - measured) / "
              "measured. Timings on a machine shared with other work are noisy.")
    figures["runs"] = {m: [dataclasses.asdict(r) for r in rs] for m, rs in runs.items()}
    figures["workdir"] = str(base)
    return figures


def _title(args, members: list[Member], judge: ModelRef, judge_tokens: int) -> str:
    who = ", ".join(f"{m.name}={m.model.describe()}:{m.max_tokens}" for m in members)
    return (f"bench e2e: {args.rows} rows; members {who}; judge {judge.describe()}:{judge_tokens}; "
            f"prior {args.prior_rows} rows; devices {args.devices}")
