"""`make demo`: the ensemble DAG on a real Airflow with a real SamuLLM runner, on this machine.

What it does: an Airflow home under the repository (`.airflow/demo`, git-ignored; SQLite), tiny
random-weight models made on first use, `samullm runner` and Airflow's api-server, scheduler,
dag-processor and triggerer started as separate processes; then the `samullm_ensemble` DAG
(dags/samullm_ensemble.py: two models answer 24 questions, a judge reads both answers) is
triggered through Airflow's REST API and waited for, and a summary is printed: planned vs actual
stages, rows and tokens per node, where the result columns are, the UI's address and login.
Everything it started is stopped at the end, unless --keep-running (then Ctrl-C stops it). The
last line is JSON: {"dag_run_state", "rows", "nodes", "stages_planned", "stages_actual", "seconds"}.

`python -m samullm.demo --dry-run` plans examples/ensemble_judge.yaml (eight chat models and a
judge over 10,000 ShareGPT prompts) on the paper's 8 x A100 node instead: no process, no GPU.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "ensemble_judge.yaml"
NODE = "a100-80gb-x8"
OUT_DIR = REPO_ROOT / "artifacts" / "demo"
DEMO_HOME = REPO_ROOT / ".airflow" / "demo"
DAG_ID = "samullm_ensemble"
TINY_PRESETS = ("tiny-s", "tiny-m")  # what the ensemble DAG's default params name


def dry_run() -> int:
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


def print_summary(console, chart: dict, manifests: dict[str, dict], run: dict) -> None:
    from rich.table import Table

    stages = Table(title=f"Stages of {run['dag_run_id']}: planned (plan v1) vs actual — seconds since registration")
    for col in ("stage", "planned nodes", "planned start–end", "actual nodes", "actual start–end"):
        stages.add_column(col)
    planned: dict[int, list] = {}
    for row in chart["rows"]:
        for bar in row["planned"]:
            planned.setdefault(bar["stage"], []).append((row["node"], bar))
    actual = {s["index"]: s for s in chart["actual_stages"]}
    for i in range(max(len(planned), len(actual))):
        p = planned.get(i, [])
        a = actual.get(i)
        stages.add_row(
            str(i),
            ", ".join(f"{n} {_plan_tag(b)}" for n, b in p),
            f"{p[0][1]['start']:.1f}–{p[0][1]['end']:.1f}" if p else "",
            ", ".join(a["nodes"]) if a else "",
            f"{a['start']:.1f}–{a['end']:.1f}" if a and a["end"] is not None else "",
        )
    console.print(stages)
    nodes = Table(title="Nodes")
    for col in ("node", "model", "state", "rows", "prompt tokens", "output tokens", "tokens/s", "plan", "load s", "running s"):
        nodes.add_column(col)
    for row in chart["rows"]:
        plan = row["plan"] or {}
        nodes.add_row(row["node"], Path(row["model"]).name, row["state"], f"{row['rows_done']}/{row['rows_total']}",
                      str(row["prompt_tokens"]), str(row["output_tokens"]),
                      f"{row['tokens_per_second']:.1f}" if row["tokens_per_second"] else "–",
                      _plan_tag(plan) if plan else "–", f"{row['load_seconds'] or 0:.1f}", f"{row['seconds_running']:.1f}")
    console.print(nodes)
    console.print("result columns (one JSON object per row; the manifests are in XCom):")
    for row in chart["rows"]:
        m = manifests.get(row["node"], {})
        console.print(f"  {row['node']}: {m.get('result_uri') or row['result_uri']}", soft_wrap=True)


def _plan_tag(bar: dict) -> str:
    dp = f"×DP{bar['dp']}" if bar.get("dp", 1) > 1 else ""
    return f"TP{bar.get('tp', '?')}{dp}@{','.join(map(str, bar.get('devices', [])))}"


def airflow_demo(args: argparse.Namespace) -> int:
    from samullm.airflow_env import AirflowStack, RunnerProcess, free_port, port_in_use
    from samullm.airflow_rest import AirflowRest, quote
    from samullm.commands.plan import make_console
    from samullm.tinymodel import cached_preset

    console = make_console()
    t0 = time.monotonic()
    home = Path(args.home)
    api_port = args.port if not port_in_use(args.port) else free_port()
    runner_port = args.runner_port if not port_in_use(args.runner_port) else free_port()
    # The runner's home is the demo's, but this machine's calibration (`samullm calibrate`, kept
    # in the repository's default home) is what its plans should be costed with.
    calibration = REPO_ROOT / ".samullm" / "calibration"
    extra_env = {"SAMULLM_LATENCY_DIR": str(calibration)} if calibration.is_dir() else {}
    runner = RunnerProcess(home=home / "runner", port=runner_port, secret=_secret(home), extra_env=extra_env)
    stack = AirflowStack(home=home / "airflow", dags_folder=REPO_ROOT / "dags", api_port=api_port,
                         runner_url=runner.url, runner_secret=runner.secret)
    console.print(f"[bold]SamuLLM on Airflow[/bold]: home {home}")
    for name in TINY_PRESETS:
        console.print(f"tiny model {name}: {cached_preset(name)}")
    result = {"dag_run_state": "not started", "rows": 0, "nodes": 0, "stages_planned": 0, "stages_actual": 0}
    failed = False
    try:
        runner.start()
        stack.prepare()
        stack.start()
        console.print(f"started samullm runner ({runner.url}) and Airflow (api-server, scheduler, dag-processor, "
                      f"triggerer); logs in {stack.log_dir} and {runner.home / 'logs'}")
        runner.wait_ready()
        stack.wait_ready()
        console.print(f"Airflow healthy after {time.monotonic() - t0:.0f} s")
        rest = AirflowRest(stack.base_url, stack.username, stack.password)
        rest.wait_for_dag(DAG_ID)
        rest.unpause(DAG_ID)
        run = rest.trigger(DAG_ID, {"max_tokens": args.max_tokens})
        run_id = run["dag_run_id"]
        console.print(f"triggered {DAG_ID} run {run_id}")
        last = [""]

        def progress(_run: dict) -> None:
            line = _progress_line(rest, run_id)
            if line and line != last[0]:
                console.print(f"{time.monotonic() - t0:6.1f} s  {line}")
                last[0] = line

        run = rest.wait_for_run(DAG_ID, run_id, timeout=args.timeout, poll=2.0, on_poll=progress)
        result["dag_run_state"] = run["state"]
        chart = rest.get(f"/samullm/api/runs/{quote(DAG_ID)}/{quote(run_id)}")
        manifests = {}
        for ti in rest.task_instances(DAG_ID, run_id):
            if ti["state"] == "success" and ti["operator"] == "SamuLLMNodeOperator":
                m = rest.xcom(DAG_ID, run_id, ti["task_id"])
                manifests[m["node"]] = m
        print_summary(console, chart, manifests, run)
        result.update(rows=sum(r["rows_done"] for r in chart["rows"]), nodes=len(chart["rows"]),
                      stages_planned=chart["stages_planned"], stages_actual=chart["stages_actual"])
        console.print(f"UI: {stack.base_url}/dags/{DAG_ID}/runs/{quote(run_id)}/plugin/samullm-stages "
                      f"(user {stack.username}, password {stack.password})")
        if run["state"] != "success":
            for ti in rest.task_instances(DAG_ID, run_id):
                if ti["state"] != "success":
                    console.print(f"[red]{ti['task_id']} {ti['state']}[/red]; its log:\n"
                                  + rest.task_log(DAG_ID, run_id, ti["task_id"], max(1, ti["try_number"]))[-2000:])
        result["seconds"] = round(time.monotonic() - t0, 1)
        if args.keep_running:
            print(json.dumps(result), flush=True)  # and again, as the last line, once stopped
            console.print(f"Keeping Airflow ({stack.base_url}) and the runner up: press Ctrl-C to stop them.")
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except Exception as err:
        result["seconds"] = round(time.monotonic() - t0, 1)
        print(f"samullm demo: error: {err}", file=sys.stderr)
        failed = True
    finally:
        console.print("stopping Airflow and the runner…")
        stack.stop()
        runner.stop()
        result.setdefault("seconds", round(time.monotonic() - t0, 1))
        print(json.dumps(result), flush=True)  # the last line, whatever happened
    return 0 if result["dag_run_state"] == "success" and not failed else 1


def _secret(home: Path) -> str:
    """The demo's runner secret, made once and kept under the demo home."""
    import secrets

    path = home / "runner.secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _progress_line(rest, run_id: str) -> str:
    """Task states, and rows done per node from the plugin's API once the run is registered."""
    from samullm.airflow_rest import AirflowApiError, quote

    states = {t["task_id"]: t["state"] or "none" for t in rest.task_instances(DAG_ID, run_id)}
    try:
        chart = rest.get(f"/samullm/api/runs/{quote(DAG_ID)}/{quote(run_id)}")
        rows = {r["node"]: f"{r['state']} {r['rows_done']}/{r['rows_total']}" for r in chart["rows"]}
    except AirflowApiError:
        rows = {}
    return "  ".join(f"{t}: {s}" + (f" ({rows[t]})" if t in rows else "") for t, s in sorted(states.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samullm.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="plan the paper-sized example instead (no processes)")
    parser.add_argument("--keep-running", action="store_true", help="leave the UI and the runner up until Ctrl-C")
    parser.add_argument("--home", default=str(DEMO_HOME), help=f"Airflow and runner homes (default {DEMO_HOME})")
    parser.add_argument("--port", type=int, default=8790, help="api-server port (a free one if taken; default 8790)")
    parser.add_argument("--runner-port", type=int, default=8795, help="runner port (a free one if taken)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the DAG run")
    args = parser.parse_args(argv)
    return dry_run() if args.dry_run else airflow_demo(args)


if __name__ == "__main__":
    sys.exit(main())
