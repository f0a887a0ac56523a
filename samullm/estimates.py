"""A planned stage sequence replayed over K samples of output lengths, turned into a `Schedule`.

In each sample the stages run in order with the planned plans; a stage ends when the members
planned to finish in it have finished (with other lengths the planned first finisher may not be
first; the devices of an early finisher idle until the stage ends). Runs are simulated exactly
here (no search shortcuts). Start/end of each stage are the mean over samples, with their spread.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from samullm.costing import Coster
from samullm.schedule import NodeSpan, Schedule, Stage, StageNode
from samullm.timeline import Choice, Keep, Preload, StageRecord, Timeline

PlannedStage = tuple[dict[str, Choice], set[str]]  # choice, members planned to finish


def replay(start: Callable[[int], Timeline], stages: list[PlannedStage], sample: int) -> list[StageRecord | None]:
    """Run the planned stages on sample `sample`; None for a stage with nothing left to do."""
    tl = start(sample)
    out: list[StageRecord | None] = []
    for choice, finishers in stages:
        live = {}
        for name, c in choice.items():
            prog = tl.nodes[name]
            if prog.finished or (isinstance(c, Keep) and prog.run is None):
                continue
            if isinstance(c, Preload) and (prog.run is not None or name in tl.runnable()):
                continue  # its inputs were ready sooner in this sample: it launches as planned later
            live[name] = c
        if all(isinstance(c, Preload) for c in live.values()):
            out.append(None)
            continue
        out.append(tl.apply(live, until=finishers & set(live)))
    if not tl.done:  # lengths this sample made a planned finisher finish late: finish greedily
        leftover = {n: Keep() for n in tl.running()}
        while not tl.done and leftover:
            tl.apply(leftover)
            leftover = {n: Keep() for n in tl.running()}
        if not tl.done:
            raise RuntimeError("the planned stages leave nodes unfinished")
    return out


def build_schedule(
    coster: Coster,
    start: Callable[[int], Timeline],
    stages: list[PlannedStage],
    samples: int,
    *,
    application: str,
    node_spec: str,
    method: str,
    seed: int,
) -> Schedule:
    runs = [replay(start, stages, s) for s in range(samples)]
    first = runs[0]
    out_stages: list[Stage] = []
    spans: dict[str, dict] = {}
    makespans = []
    for s, recs in enumerate(runs):
        ends = [r.end for r in recs if r is not None]
        makespans.append(max(ends) if ends else 0.0)
    for i, (choice, finishers) in enumerate(stages):
        recs = [run[i] for run in runs if run[i] is not None]
        ref = first[i] if first[i] is not None else (recs[0] if recs else None)
        if ref is None:
            continue
        starts = np.array([r.start for r in recs])
        ends = np.array([r.end for r in recs])
        nodes = []
        for name, m in ref.members.items():
            before = np.mean([r.members[name].done_before for r in recs if name in r.members])
            after = np.mean([r.members[name].done_after for r in recs if name in r.members])
            nodes.append(
                StageNode(
                    node=name,
                    model=coster.model(name),
                    tp=m.plan.tp,
                    dp=m.plan.dp,
                    devices=sorted(d for rep in m.replicas for d in rep),
                    replicas=[list(r) for r in m.replicas],
                    action=m.action,
                    load_seconds=round(m.load, 3),
                    requests_total=coster.num_requests(name, 0),
                    requests_done_before=float(before),
                    requests_done_after=float(after),
                    finishes=name in finishers,
                )
            )
            span = spans.setdefault(name, {"start": [], "end": []})
            if name in finishers:
                span["end"] = [r.end for r in recs]
        for name in ref.members:
            spans[name].setdefault("first", float(starts.mean()))
        out_stages.append(
            Stage(
                index=len(out_stages),
                nodes=nodes,
                start=float(starts.mean()),
                end=float(ends.mean()),
                start_std=float(starts.std()),
                end_std=float(ends.std()),
                ends_with=ref.ender,
            )
        )
    node_spans = [
        NodeSpan(
            node=name,
            model=coster.model(name),
            start=v["first"],
            end=float(np.mean(v["end"])) if v["end"] else v["first"],
            end_std=float(np.std(v["end"])) if v["end"] else 0.0,
        )
        for name, v in spans.items()
    ]
    topo = coster.topology
    return Schedule(
        application=application,
        node_spec=node_spec,
        num_devices=topo.num_devices,
        method=method,
        stages=out_stages,
        spans=node_spans,
        makespan=float(np.mean(makespans)),
        makespan_std=float(np.std(makespans)),
        makespan_samples=[float(m) for m in makespans],
        samples=samples,
        seed=seed,
    )
