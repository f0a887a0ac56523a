"""Executing plans in a "truth" simulation: what the runtime would do, with costs it cannot know.

The truth fixes every request's output length once (drawn, seeded, from its model's
distribution) and costs iterations with a latency model other than the planner's (the benchmark
uses the measured A100 rows). Methods are executed the way the runtime runs them:

- a baseline policy decides at the start and whenever a node finishes (its own rule);
- SamuLLM plans from the truth's current state (finished nodes, rows done, running nodes and
  their devices, warm engines, and the statistics the runtime would have observed: output
  lengths of finished requests, per-row outputs of finished nodes, the router's real split,
  the ratio of measured to predicted run time per model), runs the plan's first stage, and
  re-plans when any node finishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from samullm.costing import SimulationCoster
from samullm.plans import ExecPlan
from samullm.state import ObservedLengths, ObservedStats, PlannerState, RunningNode, WarmEngine
from samullm.timeline import Choice, Keep, Launch, Preload, Timeline


@dataclass
class Execution:
    makespan: float
    stages: int
    planning_seconds: list[float] = field(default_factory=list)


def observed_state(tl: Timeline, truth: SimulationCoster, probe: SimulationCoster | None = None) -> PlannerState:
    """What the runtime knows at `tl`'s current time, as the planner's input.

    `probe`: the planner's cost model on the truth's requests; the ratio of the truth's run time
    to the probe's on a finished node's last run is the observed latency correction."""
    app = truth.app
    sample = truth.workloads.sample(tl.sample)
    state = PlannerState(elapsed=tl.time)
    observed = ObservedStats()
    ratios: dict[str, list[float]] = {}
    for name, prog in tl.nodes.items():
        req = sample[name]
        node = app.node(name)
        if prog.finished:
            state.finished.append(name)
            observed.output_tokens[name] = {int(r): int(o) for r, o in zip(req.rows, req.output_lens, strict=True)}
        elif prog.done.any():
            state.done_rows[name] = [int(r) for r in req.rows[prog.done]]
        if prog.done.any():
            outs = req.output_lens[prog.done]
            cap = np.minimum(node.sampling.max_tokens, truth.models[name].max_model_len - req.input_lens[prog.done])
            seen = observed.output_lengths.setdefault(node.model, ObservedLengths())
            seen.lengths.extend(int(x) for x in outs)
            seen.capped.extend(bool(x) for x in outs >= cap)
        if prog.run is not None:
            reps = [list(r) for r in prog.run.replicas]
            state.running.append(RunningNode(node=name, tp=prog.run.plan.tp, dp=prog.run.plan.dp, replicas=reps))
    for rec in tl.records:  # latency correction from each node's finishing run
        for name, m in rec.members.items():
            if m.finishes and probe is not None:
                idx = np.arange(sample[name].n)
                truth_t = truth.run_times(name, m.plan, idx, tl.sample).max(initial=0.0)
                model_t = probe.run_times(name, m.plan, idx, tl.sample).max(initial=0.0)
                if model_t > 0:
                    ratios.setdefault(app.node(name).model, []).append(truth_t / model_t)
    observed.latency_scale = {m: float(np.mean(r)) for m, r in ratios.items()}
    for routed in (n.name for n in app.nodes if n.route is not None):
        if app.node(routed).route.router in state.finished:
            observed.routes[routed] = [int(r) for r in sample[routed].rows]
    for reps, w in tl.warm.items():
        state.warm.append(WarmEngine(node=w.node, tp=w.plan.tp, dp=w.plan.dp, replicas=[list(r) for r in reps],
                                     preloaded=w.preload, ready_in=max(0.0, w.ready_at - tl.time)))
    state.observed = observed
    return state


def execute_samullm(
    truth: SimulationCoster,
    replan: Callable[[PlannerState], "object"],
    probe: SimulationCoster | None = None,
) -> Execution:
    """Run SamuLLM in the truth: plan, run the first stage to the first finisher, re-plan.
    `replan(state) -> Schedule` is the planner as the runtime would call it."""
    tl = Timeline.start(truth, 0)
    out = Execution(0.0, 0)
    while not tl.done:
        state = observed_state(tl, truth, probe)
        t0 = time.perf_counter()
        schedule = replan(state)
        out.planning_seconds.append(time.perf_counter() - t0)
        stage = schedule.stages[0]
        choice: dict[str, Choice] = {}
        for sn in stage.nodes:
            if sn.action == "continue":
                choice[sn.node] = Keep()
            elif sn.action == "preload":
                choice[sn.node] = Preload(ExecPlan(sn.tp, sn.dp), tuple(tuple(r) for r in sn.replicas))
            else:
                choice[sn.node] = Launch(ExecPlan(sn.tp, sn.dp), tuple(tuple(r) for r in sn.replicas))
        tl.apply(choice)
        out.stages += 1
    out.makespan = tl.time
    return out


# --- the truth's per-iteration costs -------------------------------------------------------------

class _Scaled:
    """`measured` (a profiled reference) times how much slower the cost model says the target
    is than that reference, per iteration: truth for a (model, TP) with no profile of its own."""

    def __init__(self, measured, target_model, reference_model) -> None:
        self.measured, self.target, self.reference = measured, target_model, reference_model

    def iteration_time(self, batch) -> float:
        ref = self.reference.iteration_time(batch)
        return self.measured.iteration_time(batch) * (self.target.iteration_time(batch) / ref if ref > 0 else 1.0)

    def decode_run_time(self, decode_seqs: int, decode_context: int, num_iterations: int) -> float:
        ref = self.reference.decode_run_time(decode_seqs, decode_context, num_iterations)
        tgt = self.target.decode_run_time(decode_seqs, decode_context, num_iterations)
        return self.measured.decode_run_time(decode_seqs, decode_context, num_iterations) * (tgt / ref if ref > 0 else 1.0)


# Same architecture and weights shape as a profiled model: the instruct fine-tune costs the same.
PROFILE_ALIASES = {"Mixtral-8x7B-Instruct-v0.1": "Mixtral-8x7B-v0.1"}


def truth_latency_factory(profiles_dir) -> tuple[Callable, dict[str, str]]:
    """latency_for(spec, tp, device) for the benchmark's truth, and a record of where each
    (model, TP)'s truth came from.

    - a profile of (model, TP) exists: its measured rows, interpolated (A's interpolator);
    - else: the measured rows of the closest profile (the same model at the nearest TP, else the
      architecturally nearest profiled model at the nearest TP), scaled per iteration by the
      ratio of the cost model's latency for the target to the cost model's for that reference.
      So the truth keeps measured irregularities and the planner's model is never the truth."""
    from pathlib import Path

    from costmodel.latency import latency_model_for
    from costmodel.latency_library import measured_latency_model
    from costmodel.latency_predict import architecture_distance
    from costmodel.models import load_model_spec, match_model_name
    from costmodel.profiles import find_profiles, parse_profile_name, read_profile

    profiles: dict[tuple[str, int], Path] = {}
    for path in find_profiles(Path(profiles_dir)):
        model, tp = parse_profile_name(path)
        profiles[(model, tp)] = path
    measured_cache: dict[tuple[str, int], object] = {}
    sources: dict[str, str] = {}

    def measured(model: str, tp: int, device):
        key = (model, tp)
        if key not in measured_cache:
            rows = read_profile(profiles[key])
            measured_cache[key] = measured_latency_model(rows, load_model_spec(model), device)
        return measured_cache[key]

    def latency_for(spec, tp, device):
        names = {m for m, _ in profiles}
        name = PROFILE_ALIASES.get(spec.name) or match_model_name(spec.name, names)
        if name is not None and (name, tp) in profiles:
            sources[f"{spec.name} TP{tp}"] = f"measured rows of {name} TP{tp}"
            return measured(name, tp, device)
        if name is not None:
            ref_name = name
        else:  # the nearest profiled model of the same family (else of any)
            family = [m for m in names if load_model_spec(m).architecture == spec.architecture] or list(names)
            ref_name = min(family, key=lambda m: (architecture_distance(spec, load_model_spec(m)), m))
        ref_tp = min((t for m, t in profiles if m == ref_name), key=lambda t: (abs(t - tp), -t))
        ref_spec = load_model_spec(ref_name)
        sources[f"{spec.name} TP{tp}"] = (
            f"measured rows of {ref_name} TP{ref_tp} x cost-model ratio {spec.name} TP{tp} / {ref_name} TP{ref_tp}"
        )
        return _Scaled(measured(ref_name, ref_tp, device), latency_model_for(spec, tp, device),
                       latency_model_for(ref_spec, ref_tp, device))

    return latency_for, sources
