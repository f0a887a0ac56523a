"""`make demo` (until the runtime lands): a dry run of the example ensemble application.

Plans examples/ensemble_judge.yaml (eight chat models answer 10,000 ShareGPT prompts, then a judge
reads every answer) on the SamuLLM paper's node (8 x A100-80GB, NVLink pairs), prints the stage
table with predicted times, compares the prediction with the baselines' on the same cost model,
and saves the Gantt chart as SVG. No GPU is used.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "ensemble_judge.yaml"
NODE = "a100-80gb-x8"
OUT_DIR = REPO_ROOT / "artifacts" / "demo"


def main(argv: list[str] | None = None) -> int:
    from samullm.baselines import baseline_names
    from samullm.commands.plan import make_console, print_schedule
    from samullm.costing import build_coster
    from samullm.datasets import resolve
    from samullm.errors import UserInputError
    from samullm.gantt import save_svg
    from samullm.graph import load_application
    from samullm.planner import PlannerOptions, plan

    console = make_console()
    try:
        app = load_application(EXAMPLE)
        console.print(f"[bold]SamuLLM dry run[/bold]: {EXAMPLE.relative_to(REPO_ROOT)} on {NODE}")
        resolved = resolve(app)
        schedule = plan(app, NODE, options=PlannerOptions())
        print_schedule(schedule, console)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        svg = save_svg(schedule, str(OUT_DIR / "ensemble_plan.svg"))
        (OUT_DIR / "ensemble_plan.json").write_text(schedule.to_json())
        console.print(f"Gantt chart: {svg}")
        console.print("baselines on the same cost model (predicted makespan):")
        from costmodel.hardware import get_node_preset

        node = get_node_preset(NODE)
        for name in baseline_names():
            other = plan(app, node, method=name, options=PlannerOptions(estimate_samples=1),
                         coster=build_coster(app, node, resolved=resolved))
            console.print(f"  {name:15s} {other.makespan:8.1f} s   (SamuLLM's plan is {other.makespan / schedule.makespan:.2f}x faster)")
    except UserInputError as err:
        print(f"samullm demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
