"""`samullm run APP`: run an application on this machine's devices without Airflow.

An in-process runner registers the application, submits every node (each runs once its upstream
nodes have finished), shows a progress bar per node, and ends with the planned stages (plan
version 1) beside the stages as they ran, each node's throughput, and one JSON line. Interrupted
(Ctrl-C), it stops its engines and says how to resume: the same command with `--run-id`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run an application here, without Airflow")
    parser.add_argument("app", help="application file (YAML or JSON)")
    parser.add_argument("--devices", default="cpu", help="cpu | gpu | node file (default cpu)")
    parser.add_argument("--results", default=None, help="where result columns go: path or fsspec URL (default <home>/results)")
    parser.add_argument("--store", default=None, help="SQLAlchemy URL of the store (default SQLite in the home)")
    parser.add_argument("--home", default=None, help="checkpoints and logs (default $SAMULLM_HOME or ./.samullm)")
    parser.add_argument("--method", default="samullm", help="samullm, or a planner baseline's name to execute its plan")
    parser.add_argument("--run-id", default=None, help="id of the run; an interrupted run with this id resumes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _short(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1]


def _progress(console: Console, runner, run_id: str, quiet: bool):
    """Poll the run until it is no longer running, drawing one bar per node."""
    if quiet:
        return runner.wait(run_id)
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[state]:<10} {task.fields[tokens]:>8} tok"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {}
        while True:
            for s in runner.node_statuses(run_id):
                if s.node not in tasks:
                    tasks[s.node] = progress.add_task(s.node, total=s.rows_total or None, state=s.state, tokens=0)
                progress.update(tasks[s.node], completed=s.rows_done, total=max(s.rows_total, s.rows_done) or None,
                                state=s.state, tokens=s.output_tokens)
            status = runner.app_status(run_id)
            if status.state != "running":
                return status
            time.sleep(0.5)


def _stage_tables(console: Console, view) -> tuple[int, int]:
    first = view.plans[0].schedule if view.plans else None
    planned = Table(title="planned stages (plan v1; seconds from the plan)")
    for col in ("stage", "start", "end", "nodes"):
        planned.add_column(col, justify="right" if col != "nodes" else "left")
    for stage in first.stages if first else []:
        nodes = ", ".join(
            f"{n.node} TP{n.tp}{'xDP' + str(n.dp) if n.dp > 1 else ''} [{','.join(map(str, n.devices))}] {n.action}"
            for n in stage.nodes
        )
        planned.add_row(str(stage.index), f"{stage.start:.1f}", f"{stage.end:.1f}", nodes)
    actual = Table(title="actual stages (seconds from the run's start)")
    for col in ("stage", "start", "end", "plan", "nodes"):
        actual.add_column(col, justify="right" if col != "nodes" else "left")
    for stage in view.stages:
        nodes = ", ".join(f"{n.node} TP{n.tp}{'xDP' + str(n.dp) if n.dp > 1 else ''} [{','.join(map(str, n.devices))}]"
                          for n in stage.nodes)
        end = f"{stage.end:.1f}" if stage.end is not None else "-"
        actual.add_row(str(stage.index), f"{stage.start:.1f}", end, f"v{stage.plan_version}", nodes)
    console.print(planned)
    console.print(actual)
    return (len(first.stages) if first else 0), len(view.stages)


def _node_table(console: Console, view) -> dict:
    table = Table(title="nodes")
    for col in ("node", "model", "state", "rows", "failed", "out tokens", "launches", "load s", "run s", "tok/s"):
        table.add_column(col, justify="left" if col in ("node", "model", "state") else "right")
    figures = {}
    for s in view.nodes:
        rate = s.output_tokens / s.compute_seconds if s.compute_seconds > 0 else 0.0
        table.add_row(s.node, _short(s.model), s.state, f"{s.rows_done}/{s.rows_total}", str(s.rows_failed),
                      str(s.output_tokens), str(s.attempts), f"{s.load_seconds or 0:.1f}", f"{s.seconds_running:.1f}",
                      f"{rate:.1f}")
        figures[s.node] = {"state": s.state, "rows": s.rows_done, "failed_rows": s.rows_failed,
                           "output_tokens": s.output_tokens, "launches": s.attempts, "crashes": s.crashes,
                           "seconds": s.seconds_running, "tokens_per_s": round(rate, 2)}
    console.print(table)
    for s in view.nodes:
        if s.error:
            console.print(f"[red]{s.node} failed:[/red] {s.error}")
        for reason, count in s.row_errors:
            console.print(f"[yellow]{s.node}: {count} rows failed:[/yellow] {reason}")
    return figures


def run(args: argparse.Namespace) -> int:
    from samullm.api import RegisterApplication
    from samullm.commands.plan import make_console
    from samullm.graph import load_application
    from samullm.runner import Runner
    from samullm.runtime.config import make_config

    console = make_console()
    app = load_application(args.app)
    config = make_config(args.devices, args.home, args.store, args.results, resume=False)
    run_id = args.run_id or f"{app.name}.{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    runner = Runner(config)
    runner.start()
    try:
        status = runner.register(
            RegisterApplication(app_run_id=run_id, application=app.model_dump(mode="json", exclude_defaults=True),
                                method=args.method),
            submit_all=True,
        )
        console.print(f"run {run_id}: {len(app.nodes)} nodes on {config.node_spec.num_devices} "
                      f"{config.devices.kind} devices; home {config.home}")
        if status.state == "running":
            status = _progress(console, runner, run_id, args.quiet)
    except KeyboardInterrupt:
        runner.shutdown()
        console.print(f"interrupted: engines stopped, finished rows kept. Resume with: samullm run {args.app} "
                      f"--run-id {run_id} --home {config.home}" + (f" --store {args.store}" if args.store else ""))
        return 130
    except BaseException:
        runner.shutdown()
        raise
    view = runner.view(run_id)
    runner.shutdown()
    planned, actual = _stage_tables(console, view)
    nodes = _node_table(console, view)
    first = view.plans[0].schedule if view.plans else None
    console.print(f"run {run_id}: {status.state} in {view.elapsed:.1f} s"
                  + (f" (plan v1 predicted {first.makespan:.1f} s)" if first else "")
                  + f"; results in {status.results_uri}/{run_id}")
    print(json.dumps({
        "app_run_id": run_id,
        "state": status.state,
        "seconds": view.elapsed,
        "predicted_makespan": round(first.makespan, 3) if first else None,
        "plans": len(view.plans),
        "stages_planned": planned,
        "stages_actual": actual,
        "nodes": nodes,
        "results": f"{status.results_uri}/{run_id}",
        "error": status.error,
    }))
    return 0 if status.state == "success" else 1
