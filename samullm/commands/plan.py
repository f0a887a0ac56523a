"""`samullm plan APP --node PRESET|FILE [--baseline NAME] [--svg FILE]`: the dry run.

Plans an application file on a node without touching any GPU and prints the stage table (nodes,
plans, devices, predicted start and end with their spread over sampled output lengths), then
optionally writes the schedule as JSON and a Gantt chart as SVG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from samullm.baselines import baseline_names
from samullm.errors import UserInputError
from samullm.schedule import Schedule


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="plan an application's stages on a node (dry run)")
    parser.add_argument("app", help="application file (YAML or JSON)")
    parser.add_argument("--node", required=True, help="node preset (e.g. a100-80gb-x8), node file, 'cpu' or 'gpu'")
    parser.add_argument("--baseline", choices=baseline_names(), help="plan with a baseline heuristic instead")
    parser.add_argument("--svg", help="write the Gantt chart to this SVG file")
    parser.add_argument("--json", dest="json_out", help="write the schedule as JSON to this file")
    parser.add_argument("--state", help="re-plan from a runtime state (JSON, samullm.state.PlannerState)")
    parser.add_argument("--samples", type=int, default=4, help="output-length samples for the estimate (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def make_console() -> Console:
    """Rich console; wide enough for the tables when output goes to a file or pipe."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_schedule(schedule: Schedule, console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(title=f"{schedule.application} on {schedule.node_spec} — {schedule.method} (* ends the stage)")
    for col in ("stage", "start s", "end s", "node", "model", "plan", "devices", "action", "load s", "requests done"):
        table.add_column(col, justify="right" if col.endswith(" s") or col in ("stage", "requests done") else "left")
    for stage in schedule.stages:
        for i, n in enumerate(stage.nodes):
            first = i == 0
            table.add_row(
                str(stage.index) if first else "",
                f"{stage.start:.1f} ±{stage.start_std:.1f}" if first else "",
                f"{stage.end:.1f} ±{stage.end_std:.1f}" if first else "",
                n.node + (" *" if n.node == stage.ends_with else ""),
                n.model,
                f"TP{n.tp}" + (f"×DP{n.dp}" if n.dp > 1 else ""),
                ",".join(map(str, n.devices)),
                n.action,
                f"{n.load_seconds:.1f}",
                f"{n.requests_done_before:.0f}→{n.requests_done_after:.0f} of {n.requests_total}",
            )
        table.add_section()
    console.print(table)
    console.print(
        f"predicted makespan {schedule.makespan:.1f} s ± {schedule.makespan_std:.1f} s over {schedule.samples} samples; "
        f"planned in {schedule.planning_seconds:.2f} s"
    )
    for note in schedule.notes:
        console.print(f"note: {note}")


def run(args: argparse.Namespace) -> int:
    from samullm.graph import load_application
    from samullm.planner import PlannerOptions, plan
    from samullm.state import PlannerState

    if args.samples < 1:
        raise UserInputError("--samples must be at least 1")
    app = load_application(args.app)
    state = None
    if args.state:
        path = Path(args.state)
        if not path.is_file():
            raise UserInputError(f"state file {args.state!r} does not exist")
        try:
            state = PlannerState.model_validate_json(path.read_text())
        except ValueError as err:
            raise UserInputError(f"{args.state}: not a planner state: {str(err).splitlines()[0]}") from None
    options = PlannerOptions(estimate_samples=args.samples, seed=args.seed)
    schedule = plan(app, args.node, state, method=args.baseline or "samullm", options=options)
    console = make_console()
    print_schedule(schedule, console)
    if args.json_out:
        Path(args.json_out).write_text(schedule.to_json())
        console.print(f"schedule written to {args.json_out}")
    if args.svg:
        from samullm.gantt import save_svg

        save_svg(schedule, args.svg)
        console.print(f"Gantt chart written to {args.svg}")
    return 0
