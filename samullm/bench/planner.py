"""`samullm bench planner`: SamuLLM's plans beside the baselines', executed in a truth simulation.

Workloads shaped like the paper's on its node (8 x A100-80GB, NVLink pairs), see
samullm/paper_workloads.py. Truth per workload: every request's output length drawn once
(seed `--truth-seed`) from its model's distribution, iterations costed by the measured A100 rows
(interpolated; models or TP degrees without a profile: the nearest profile scaled by the cost
model's ratio, see samullm/executor.py), engine loads from costmodel.startup. SamuLLM plans with
its own cost model (fitted latency, sampled lengths) and re-plans from the truth's state after
every node finishes, as the runtime does; each baseline is run the same way (its rule deciding
on the planner's cost model, `samullm run --method NAME`), executed in the truth, re-planned at
the same events.
Engine loads: every node start pays its load, except that a node may take over the engine a
finished node of the same model and engine options left on the same devices with the same plan,
as the runtime does (every method; `--no-engine-reuse`: every start pays).
With `--preload`, SamuLLM's search also tries loading a waiting node's engines on devices a
stage leaves idle, DP replicas then sharing the rows by when they can start (planner and truth
only: the runtime cannot run such plans yet); the lower bound then lets loads overlap inputs.
"""

from __future__ import annotations

import argparse
import time
from functools import lru_cache

import numpy as np
from rich.table import Table

from samullm.commands.plan import make_console

NAME = "planner"
HELP = "SamuLLM vs baselines on the paper's workloads, executed in a truth simulation"

NODE = "a100-80gb-x8"


def _workloads():
    from samullm import paper_workloads as pw

    return {
        "ensemble-1000-256": lambda: pw.ensemble(1000, 256),
        "ensemble-5000-256": lambda: pw.ensemble(5000, 256),
        "ensemble-10000-256": lambda: pw.ensemble(10000, 256),
        "ensemble-1000-512": lambda: pw.ensemble(1000, 512),
        "ensemble-5000-512": lambda: pw.ensemble(5000, 512),
        "ensemble-10000-512": lambda: pw.ensemble(10000, 512),
        "routing-10000": lambda: pw.routing(10000, 256),
        "chain-1000": lambda: pw.chain(1000, 4, 256),
        "mixed": lambda: pw.mixed(1000, 1000, 256),
    }


QUICK = {  # small versions for a fast check (tests use these)
    "ensemble-300-256": lambda pw: pw.ensemble(300, 256, num_models=4),
    "routing-1000": lambda pw: pw.routing(1000, 128),
    "chain-200": lambda pw: pw.chain(200, 3, 128),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workloads", help="comma-separated workload names (default: all)")
    parser.add_argument("--quick", action="store_true", help="three small workloads (a quick check)")
    parser.add_argument("--no-engine-reuse", dest="engine_reuse", action="store_false",
                        help="every node start pays its load, even where a finished node of the same model "
                             "left its engine on the same devices (as the runtime did before it kept engines)")
    parser.add_argument("--preload", action="store_true",
                        help="SamuLLM may preload a waiting node's engines on idle devices (planner and truth only: "
                             "the runtime cannot run such plans yet; off by default)")
    parser.add_argument("--profiles", help="measured latency rows (default: the shared data's a100_iteration_latency)")
    parser.add_argument("--truth-seed", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the planner's sampling seed")


def run(args: argparse.Namespace) -> dict:
    from costmodel.hardware import get_node_preset
    from costmodel.startup import load_seconds

    from samullm import paper_workloads as pw
    from samullm.baselines import BASELINES
    from samullm.bounds import makespan_lower_bound
    from samullm.costing import build_coster
    from samullm.datasets import resolve, shared_data_dir
    from samullm.errors import UserInputError
    from samullm.executor import execute_samullm, truth_latency_factory
    from samullm.planner import PlannerOptions, plan
    from samullm.timeline import Timeline

    profiles = args.profiles or str(shared_data_dir() / "a100_iteration_latency")
    truth_latency, sources = truth_latency_factory(profiles)
    truth_latency = lru_cache(maxsize=None)(truth_latency)
    node = get_node_preset(NODE)
    if args.quick:
        chosen = {name: (lambda f=f: f(pw)) for name, f in QUICK.items()}
    else:
        every = _workloads()
        names = args.workloads.split(",") if args.workloads else list(every)
        unknown = [n for n in names if n not in every]
        if unknown:
            raise UserInputError(f"unknown workloads {unknown}; choose from {', '.join(every)}")
        chosen = {n: every[n] for n in names}

    console = make_console()
    methods = ["samullm", *BASELINES]
    makespans: dict[str, dict[str, float]] = {}
    planning: dict[str, float] = {}
    replanning: dict[str, float] = {}
    bounds: dict[str, float] = {}
    for wname, build in chosen.items():
        app = pw.build(build())
        resolved = resolve(app)
        reuse = args.engine_reuse
        truth = build_coster(app, node, seed=args.truth_seed, resolved=resolved,
                             latency_for=truth_latency, load_for=load_seconds, reuse_engines=reuse)
        probe = build_coster(app, node, seed=args.truth_seed, resolved=resolved, reuse_engines=reuse)  # planner's model, truth's requests
        # Planning time as CPU seconds of this process (one core): wall time on a shared
        # machine also counts other processes' turns.
        t0, w0 = time.process_time(), time.perf_counter()
        initial = plan(app, node, options=PlannerOptions(seed=args.seed, preload=args.preload),
                       coster=build_coster(app, node, seed=args.seed, resolved=resolved, reuse_engines=reuse))
        planning[wname] = time.process_time() - t0
        planning_wall = time.perf_counter() - w0

        quick_options = PlannerOptions(seed=args.seed, estimate_samples=0, preload=args.preload)

        def replan(state, method="samullm", app=app, resolved=resolved, reuse=reuse):
            coster = build_coster(app, node, state, seed=args.seed, resolved=resolved, reuse_engines=reuse)
            return plan(app, node, state, options=quick_options, coster=coster, method=method)

        bounds[wname] = makespan_lower_bound(Timeline.start(truth, 0), overlap_loads=args.preload).seconds
        row: dict[str, float] = {}
        out = execute_samullm(truth, replan, probe)
        row["samullm"] = out.makespan
        replanning[wname] = float(np.mean(out.planning_seconds))
        # Baselines as the runtime runs them (`samullm run --method NAME`): their policy decides
        # with the planner's cost model, is executed in the truth, and re-plans after each stage
        # from what happened, as SamuLLM does. (Run on the truth's own costs, a policy would pick
        # its plans with knowledge no planner has.)
        for name in BASELINES:
            row[name] = execute_samullm(truth, lambda state, name=name: replan(state, name), probe).makespan
        makespans[wname] = row
        console.print(
            f"{wname}: predicted {initial.makespan:.0f} s, truth {row['samullm']:.0f} s "
            f"(plan {planning[wname]:.2f} s CPU, {planning_wall:.2f} s wall; {len(out.planning_seconds)} re-plans "
            f"of {replanning[wname]:.2f} s wall on average)"
        )

    table = Table(title=f"makespan in the truth simulation (s), {NODE}")
    table.add_column("workload")
    for m in methods:
        table.add_column(m, justify="right")
    table.add_column("best baseline", justify="right")
    table.add_column("speedup vs best", justify="right")
    table.add_column("vs sequential", justify="right")
    table.add_column("lower bound", justify="right")
    table.add_column("sequential / bound", justify="right")
    table.add_column("plan s (CPU)", justify="right")
    vs_best, vs_seq, bound_vs_seq, bound_vs_best = [], [], [], []
    for wname, row in makespans.items():
        best = min(row[m] for m in BASELINES)
        vs_best.append(best / row["samullm"])
        vs_seq.append(row["sequential"] / row["samullm"])
        bound_vs_seq.append(row["sequential"] / bounds[wname])
        bound_vs_best.append(best / bounds[wname])
        table.add_row(wname, *(f"{row[m]:.0f}" for m in methods), f"{best:.0f}", f"{vs_best[-1]:.2f}x",
                      f"{vs_seq[-1]:.2f}x", f"{bounds[wname]:.0f}", f"{bound_vs_seq[-1]:.2f}x",
                      f"{planning[wname]:.2f}")
    console.print(table)
    console.print("lower bound: max(work, critical path) in the truth (samullm/bounds.py); no schedule is "
                  "faster, so sequential / bound is the most any method could gain over sequential")
    console.print("truth latency sources: " + "; ".join(f"{k}: {v}" for k, v in sorted(sources.items()) if "x cost-model" in v))

    def geomean(x):
        return float(np.exp(np.mean(np.log(x))))

    return {
        "workloads": {w: {m: round(v, 2) for m, v in row.items()} for w, row in makespans.items()},
        "planning_seconds": {w: round(v, 3) for w, v in planning.items()},
        "geomean_speedup_vs_best_baseline": round(geomean(vs_best), 4),
        "min_speedup_vs_best_baseline": round(float(min(vs_best)), 4),
        "geomean_speedup_vs_sequential": round(geomean(vs_seq), 4),
        "lower_bounds": {w: round(v, 2) for w, v in bounds.items()},
        "geomean_bound_vs_best_baseline": round(geomean(bound_vs_best), 4),
        "geomean_bound_vs_sequential": round(geomean(bound_vs_seq), 4),
    }
