"""What the runner asks the planner: the state of each active run, built from the store and
the runner's memory, and one plan per run (planned alone, or all active runs together)."""

from __future__ import annotations

from collections.abc import Callable

from samullm.api import TERMINAL_NODE_STATES as TERMINAL
from samullm.planner import plan
from samullm.runtime import feedback, jobs
from samullm.runtime.apps import AppRt
from samullm.runtime.rows import node_rows
from samullm.runtime.union import UnionCoster, UnionName, member_name, split_schedule
from samullm.schedule import Schedule
from samullm.state import ObservedLengths, ObservedStats, PlannerState, RunningNode, WarmEngine


def planner_state(rt: AppRt, store, observations: feedback.Observations,
                  warm: list[WarmEngine] | None = None) -> PlannerState:
    """What the planner must know of a run now: finished nodes, rows done, running engines,
    engines finished nodes left loaded (`warm`, the runner's), output lengths observed here and
    in earlier runs, per-row outputs, routers' decisions."""
    state = PlannerState(warm=list(warm or []))
    observed = ObservedStats()
    for name, n in rt.nodes.items():
        if n.state in TERMINAL:
            state.finished.append(name)
        tokens = store.output_tokens_by_row(rt.id, name)
        if tokens:
            observed.output_tokens[name] = {int(r): t for r, t in tokens.items()}
        if n.state not in TERMINAL:
            done = store.rows_done(rt.id, name)
            if done:
                state.done_rows[name] = sorted(int(r) for r in done)
        if n.launch is not None and not n.launch.stopping:
            p = n.launch.placement
            state.running.append(RunningNode(node=name, tp=p.tp, dp=p.dp, replicas=[list(r) for r in p.replicas]))
    for model in {node.model for node in rt.app.nodes}:
        lengths, censored = observations.output_lengths(model, exclude_run=rt.id)
        for node in rt.app.nodes:
            if node.model == model:
                for tokens, reason in store.output_lengths(rt.id, node.name):
                    if tokens > 0:
                        lengths.append(tokens)
                        censored.append(reason == "length")
        if lengths:
            observed.output_lengths[model] = ObservedLengths(lengths=lengths, capped=censored)
        ratio = observations.prompt_tokens_per_output_token(model)
        if ratio is not None:
            observed.prompt_tokens_per_output_token[model] = ratio
    for node in rt.app.nodes:
        if node.route is not None and rt.nodes[node.route.router].state == "success":
            rows = node_rows(rt.resolved, node.name, rt.texts.get(node.route.router, {}))
            observed.routes[node.name] = [int(r) for r in rows]
    state.observed = observed
    return state


def run_coster(rt: AppRt, state: PlannerState, observations: feedback.Observations, config):
    kind, kv = config.devices.kind, config.cpu_kv_cache_bytes
    return feedback.runtime_coster(
        rt.app, rt.resolved, config.node_spec, state, observations,
        engine_options=lambda name: jobs.worker_engine_options(rt.app.node(name), kind, kv).model_dump(),
        kv_bytes=lambda name: jobs.kv_cache_bytes(rt.app.node(name), kv),
        seed=config.planner.seed,
    )


def plan_runs(apps: list[AppRt], store, observations: feedback.Observations, config,
              warm: Callable[[AppRt], list[WarmEngine]] | None = None) -> list[Schedule]:
    """One schedule per run: planned alone, or all together (see runtime/union.py). `config` is
    the runner's (node description, devices, planner options); `warm(run)`: its idle engines."""
    states = [planner_state(rt, store, observations, warm(rt) if warm else None) for rt in apps]
    costers = [run_coster(rt, s, observations, config) for rt, s in zip(apps, states)]
    methods = {rt.method for rt in apps}
    method = methods.pop() if len(methods) == 1 else "samullm"
    if len(apps) == 1:
        return [plan(apps[0].app, config.node_spec, states[0], method=method, options=config.planner,
                     coster=costers[0])]
    union_state = PlannerState(
        finished=[member_name(i, f) for i, s in enumerate(states) for f in s.finished],
        running=[r.model_copy(update={"node": member_name(i, r.node)}) for i, s in enumerate(states) for r in s.running],
        warm=[w.model_copy(update={"node": member_name(i, w.node)}) for i, s in enumerate(states) for w in s.warm],
    )
    schedule = plan(UnionName("+".join(rt.app.name for rt in apps)), config.node_spec, union_state,
                    method=method, options=config.planner, coster=UnionCoster(costers))
    ids = [rt.id for rt in apps]
    return [split_schedule(schedule, i, rt.app.name, [x for x in ids if x != rt.id]) for i, rt in enumerate(apps)]
