"""`samullm bench optimality`: the planner beside the exhaustive optimum on random small instances.

Each instance: 3 to 5 LLM nodes of 6-13B chat models (random shape: an ensemble with a judge,
a chain, independent nodes, or a random DAG), 30 to 120 ShareGPT prompts, max_tokens of 128,
256 or 512, on 2 or 4 A100-80GB (NVLink pairs). Both sides use the planner's cost model and the
same sample of output lengths; the optimum is the exhaustive search over stage sequences
(samullm/optimal.py). Gap = planner makespan / optimum - 1, both simulated exactly.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from rich.table import Table

from samullm.commands.plan import make_console

NAME = "optimality"
HELP = "planner vs the exhaustive optimum on random small instances (median / max gap)"

MODELS = ["vicuna-13b-v1.5", "koala-13B-HF", "dolly-v2-12b", "chatglm3-6b", "Llama-2-7b-chat-hf",
          "alpaca-13b", "baize-v2-13b", "oasst-sft-4-pythia-12b-epoch-3.5"]
SHAPES = ["ensemble", "chain", "independent", "dag"]
SHAREGPT = "shared:traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instances", type=int, default=30, help="random instances (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-nodes", type=int, default=5, help="largest instance (<= 5)")


def random_instance(rng: random.Random, index: int) -> tuple[dict, str]:
    k = rng.randint(3, 5)
    shape = rng.choice(SHAPES)
    max_tokens = rng.choice([128, 256, 512])
    names = [f"n{i}" for i in range(k)]
    nodes = []
    for i, name in enumerate(names):
        reads: list[str] = []
        if shape == "ensemble" and i == k - 1:
            reads = names[:-1]
        elif shape == "chain" and i > 0:
            reads = [names[i - 1]]
        elif shape == "dag":
            reads = [n for n in names[:i] if rng.random() < 0.35]
        prompt = "{{ prompt }}" + "".join(f"\n{{{{ {r} }}}}" for r in reads)
        model = "chatglm3-6b" if reads and len(reads) > 2 else rng.choice(MODELS)  # long judge prompts need 8K context
        node = {"name": name, "model": model, "prompt": prompt, "sampling": {"max_tokens": max_tokens}}
        if model == "chatglm3-6b":
            node["engine"] = {"max_model_len": 8192}
        nodes.append(node)
    app = {
        "name": f"instance-{index}-{shape}",
        "dataset": {"trace": {"path": SHAREGPT, "num_rows": rng.randint(30, 120), "seed": rng.randint(0, 10**6),
                              "max_prompt_tokens": 1024}},
        "nodes": nodes,
    }
    node_preset = rng.choice(["a100-80gb-x2", "a100-80gb-x4"])
    return app, node_preset


def solve(app_dict: dict, node_preset: str, costs: dict | None = None) -> dict:
    from costmodel.hardware import get_node_preset

    from samullm.costing import build_coster
    from samullm.estimates import replay
    from samullm.graph import application_from_dict
    from samullm.optimal import optimum
    from samullm.planner import PlannerOptions, search
    from samullm.timeline import Timeline

    app = application_from_dict(app_dict)
    node = get_node_preset(node_preset)
    coster = build_coster(app, node, **(costs or {}))
    t0 = time.perf_counter()
    result = search(lambda: Timeline.start(coster, 0), PlannerOptions())
    planning = time.perf_counter() - t0
    records = replay(lambda s: Timeline.start(coster, s), result.stages, 0)
    planned = max(r.end for r in records if r is not None)
    t1 = time.perf_counter()
    best = optimum(lambda: Timeline.start(coster, 0), incumbent=planned)
    return {
        "planned": planned,
        "optimum": best.makespan,
        "gap": planned / best.makespan - 1.0,
        "planning_seconds": planning,
        "optimum_seconds": time.perf_counter() - t1,
        "explored": best.explored,
    }


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    console = make_console()
    table = Table(title="planner vs exhaustive optimum (cost model, same sample)")
    for col in ("instance", "node", "nodes", "planned s", "optimum s", "gap", "plan s", "exhaustive s"):
        table.add_column(col, justify="left" if col in ("instance", "node") else "right")
    gaps = []
    made = 0
    while made < args.instances:
        app, node_preset = random_instance(rng, made)
        if len(app["nodes"]) > args.max_nodes:
            continue
        made += 1
        out = solve(app, node_preset)
        gaps.append(out["gap"])
        table.add_row(app["name"], node_preset, str(len(app["nodes"])), f"{out['planned']:.1f}", f"{out['optimum']:.1f}",
                      f"{out['gap']:.3f}", f"{out['planning_seconds']:.2f}", f"{out['optimum_seconds']:.1f}")
    console.print(table)
    return {"instances": len(gaps), "median_gap": float(np.median(gaps)), "max_gap": float(np.max(gaps))}
