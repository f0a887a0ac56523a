"""The SamuLLM runner: it owns this node's devices and executes the plans of application runs.

One runner per node and per store (a lock file in its home folder keeps a second one out of
that home; two runners sharing a store would both resume its runs). It is used in process by
`samullm run` and served over HTTP by `samullm runner` (`samullm.service`). Its parts are in
`samullm/runtime/`: the run and node records (`apps.py`), what the planner is asked
(`planning.py`), engine launches (`launch.py`), the device pool, plan application, row sets and
prompts, feedback, several runs planned as one, orphan recovery, stage records, read views.

What it does, from one loop thread (`tick`, every `tick_s`), under one lock shared with the
API calls:

- Register a run (idempotent): parse and check the application, load its rows, plan it (bad
  input fails here, before any engine starts), store it and its plan (version 1).
- A node runs only once submitted (Airflow submits a node when its task runs; `samullm run`
  submits every node at registration) and once its upstream nodes have succeeded. Its rows and
  their prompts are made then (`runtime/rows.py`).
- Execute stages[0] of each run's current plan (`runtime/reconcile.py`): engines keep going,
  stop (finished rows kept), or start: one engine worker per data-parallel replica, on the
  plan's devices, taken from the device pool (a device is never held twice; a launch waits
  until all its devices are free, e.g. while a moved node's old engine shuts down).
- Watch every worker: rows finished (tailing its part file into the store), load, progress,
  its end. A worker that dies without a last word is started again with the rows still missing
  (at most `max_restarts` times per node), then the node fails with the reason. A worker that
  cannot start its engine fails the node at once (the reason is the worker's).
- When a node ends (success or failure): record its rows and observations (`runtime/feedback.py`),
  write its final column and manifest (`samullm.results`), and re-plan what remains of every
  active run with the planner from the store's state; a node the new plan moves is stopped and
  started again with only the rows without a result (the planner moves a running node only when
  that is predicted to pay by more than its `move_margin`, reload included).
- Record every plan version and every actual stage (a stage = a period during which the set of
  a run's engines is constant) for the UI's planned-vs-actual view.
- Several runs at once share the devices: every re-plan plans all active runs' remaining nodes
  together over the whole device set (`runtime/union.py` says why).
- Resume: on start, workers a dead runner left are waited for (and killed after a grace period),
  then every active run continues from the store and its part files.

Engine reuse: a worker does not exit when its rows are done but waits with its engine loaded;
a finished node's engines are kept while the plan's next use of their devices is a node of the
same model and engine options on exactly those devices with the same plan, which then takes
them over without loading (`runtime/warm.py`); the planner counts on that (`reuse_engines`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costmodel.hardware import NodeSpec
from samullm import api
from samullm.devices import DeviceSet
from samullm.errors import UserInputError
from samullm.graph import Application, application_from_dict
from samullm.planner import PlannerOptions, plan
from samullm.results import texts_by_row, write_column
from samullm.runtime import feedback, jobs
from samullm.runtime.apps import AppRt, NodeRt, build_app
from samullm.runtime.launch import Launch, Replica
from samullm.runtime.planning import plan_runs, planner_state
from samullm.runtime.pool import DevicePool
from samullm.runtime.reconcile import Placement, diff_stage, stage_placements
from samullm.runtime.recovery import wait_for_exit
from samullm.runtime.rows import node_rows, render_prompt
from samullm.runtime.stages import StageMember
from samullm.runtime.warm import IdleEngine, engine_key, wanted
from samullm.runtime.status import app_status, app_view, node_status, node_statuses
from samullm.schedule import Schedule
from samullm.state import PlannerState, WarmEngine
from samullm.store import Store, utcnow
from samullm.worker.messages import Handoff, Loaded, Progress, Row, RowResult
from samullm.worker.results import ResultWriter, read_iterations

log = logging.getLogger("samullm.runner")

TERMINAL = api.TERMINAL_NODE_STATES
MAX_REPLAN_FAILURES = 3
REPLAN_RETRY_S = 5.0
IDLE_FALLBACK_S = 30.0


@dataclass
class RunnerConfig:
    """devices: what engines are bound to; node_spec: what the planner plans on (the same
    devices, described for the cost model). home: checkpoints, worker logs, the lock file and
    (by default) the store and results."""

    devices: DeviceSet
    node_spec: NodeSpec
    home: Path
    store_url: str | None = None
    results_uri: str | None = None  # default: <home>/results
    planner: PlannerOptions = field(default_factory=PlannerOptions)
    max_restarts: int = 2  # engine workers that died without a last word, per node
    load_timeout_s: float = 600.0
    stop_timeout_s: float = 60.0
    orphan_grace_s: float = 30.0
    tick_s: float = 0.25
    cpu_kv_cache_bytes: int = jobs.DEFAULT_CPU_KV_CACHE_BYTES
    progress_interval_s: float = 1.0
    idle_engine_timeout_s: float = 300.0  # a waiting engine nobody hands rows to ends itself
    resume: bool = True  # continue every active run of the store at start

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        if len(self.devices.device_ids) != self.node_spec.num_devices:
            raise UserInputError(
                f"{len(self.devices.device_ids)} devices to bind but the node description has "
                f"{self.node_spec.num_devices}; describe the same devices"
            )


class RunnerBusy(UserInputError):
    """Another runner holds this home folder."""


class Runner:
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.home = config.home
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_home_lock()
        self.store = Store(config.store_url or f"sqlite:///{self.home / 'store.db'}")
        self.results_uri = config.results_uri or str(self.home / "results")
        self.pool = DevicePool(config.devices.device_ids)
        self.observations = feedback.Observations(self.store, config.node_spec.devices[0].name)
        self.apps: dict[str, AppRt] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._replan_reasons: list[str] = []
        self._replan_at = 0.0  # no re-plan before (a retry after a failed one)
        self._replan_failures = 0
        self.idle: list[IdleEngine] = []  # engines finished nodes left loaded (runtime/warm.py)
        self._idle_serial = 0
        self.started = False

    # -- lifecycle ----------------------------------------------------------------------------

    def _take_home_lock(self):
        path = self.home / "runner.lock"
        fh = path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RunnerBusy(
                f"another SamuLLM runner uses {self.home}; stop it, or give this one another home "
                f"(--home or SAMULLM_HOME)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return fh

    def start(self, loop: bool = True) -> None:
        """Recover from a dead runner, resume active runs, start the loop thread."""
        with self._lock:
            self._recover_orphans()
            if self.config.resume:
                for run in self.store.app_runs(states=["running"]):
                    self._resume(run.id)
            self.started = True
        if loop:
            self._thread = threading.Thread(target=self._loop, name="samullm-runner", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self.tick()
            except Exception:  # keep driving the other runs; the error is in the log
                log.exception("runner tick failed")
            self._stop.wait(self.config.tick_s)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the loop and every engine worker (finished rows kept); active runs stay active
        in the store and continue when a runner starts again on the same store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            launches = [(rt, n) for rt in self.apps.values() for n in rt.nodes.values() if n.launch]
            for rt, n in launches:
                n.launch.request_stop("runner shutting down")
            deadline = time.monotonic() + (timeout or self.config.stop_timeout_s)
            while any(n.launch and not n.launch.ended for _, n in launches) and time.monotonic() < deadline:
                for rt, n in launches:
                    if n.launch:
                        self._poll_launch(rt, n, ending=False)
                time.sleep(0.1)
            for rt, n in launches:
                if n.launch is None:
                    continue
                for r in n.launch.replicas:
                    if r.worker is not None and not r.ended:
                        r.kill()
                        r.reap()
                self._end_launch(rt, n, shutdown=True)
            for engine in self.idle:
                engine.close()
            while any(not e.exited() for e in self.idle) and time.monotonic() < deadline:
                time.sleep(0.1)
            for engine in self.idle:
                for w in engine.workers:
                    w.kill()
            self._tend_idle()
            for rt in self.apps.values():
                if not rt.done:
                    self.store.close_stages(rt.id)
        self.store.close()
        self._lock_file.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- the API ------------------------------------------------------------------------------

    def register(self, request: api.RegisterApplication, submit_all: bool = False) -> api.AppStatus:
        """Create, check and plan a run; an existing id returns its status unchanged (and is
        resumed if this runner was not running it)."""
        with self._lock:
            existing = self.store.get_app_run(request.app_run_id)
            if existing is not None:
                if existing.state == "running" and request.app_run_id not in self.apps:
                    self._resume(request.app_run_id)  # re-planned at the next tick
                return app_status(self.store, request.app_run_id)
            rt = self._build_app(
                request.app_run_id, request.application, request.context, request.method,
                request.results_uri or self.results_uri,
            )
            others = [a for a in self._active() if not a.cancelled and self._has_work(a)]
            schedules = self._plan_apps([rt] + others)  # bad input raises here: nothing stored
            self.store.register_app_run(
                rt.id, rt.app.name, request.application, self.config.node_spec.to_dict(),
                nodes=list(rt.nodes), results_uri=rt.results_base, labels=request.labels,
                method=rt.method, context=request.context,
            )
            self.apps[rt.id] = rt
            for name in rt.nodes:
                self.store.update_node(rt.id, name, rows_total=int(rt.resolved.rows_of[name].size))
            reason = "initial plan" if not others else f"initial plan, with active runs {[o.id for o in others]}"
            self._store_plans([rt] + others, schedules, reason, other_reason=f"run {rt.id} joined")
            if submit_all:
                for name in rt.nodes:
                    self._submit(rt, rt.nodes[name], {})
            return app_status(self.store, rt.id)

    def submit(self, app_run_id: str, node: str, request: api.SubmitNode | None = None) -> api.NodeStatus:
        with self._lock:
            rt = self._app(app_run_id)
            if node not in rt.nodes:
                raise KeyError(f"{app_run_id}/{node}")
            self._submit(rt, rt.nodes[node], (request or api.SubmitNode()).context)
            return node_status(self.store, app_run_id, node)

    def cancel(self, app_run_id: str) -> api.AppStatus:
        with self._lock:
            rt = self._app(app_run_id)
            if not rt.done:
                rt.cancelled = True
                for n in rt.nodes.values():
                    if n.launch is not None:
                        n.launch.request_stop("cancelled")
                    elif n.state not in TERMINAL:
                        self._set_node(rt, n, "cancelled", finished_at=utcnow())
                self._check_done(rt)
            return app_status(self.store, app_run_id)

    def app_status(self, app_run_id: str) -> api.AppStatus:
        return app_status(self.store, app_run_id)

    def apps_status(self) -> list[api.AppStatus]:
        return [app_status(self.store, r.id) for r in self.store.app_runs()]

    def node_status(self, app_run_id: str, node: str) -> api.NodeStatus:
        return node_status(self.store, app_run_id, node)

    def node_statuses(self, app_run_id: str) -> list[api.NodeStatus]:
        return node_statuses(self.store, app_run_id)

    def view(self, app_run_id: str) -> api.AppView:
        return app_view(self.store, app_run_id)

    def health(self) -> api.Health:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("samullm")
        except PackageNotFoundError:
            v = "0"
        # No lock: health must answer while the runner plans (copies of small dicts suffice).
        return api.Health(
            version=v, node_spec=self.config.node_spec.name, num_devices=self.config.node_spec.num_devices,
            devices_busy=sorted(self.pool.busy()), active_apps=sum(not rt.done for rt in list(self.apps.values())),
        )

    def dry_run(self, request: api.DryRun) -> Schedule:
        """Plan an application without running anything (on another node description if given)."""
        from costmodel.hardware import resolve_node

        app = application_from_dict(request.application)
        node = resolve_node(request.node_spec) if request.node_spec else self.config.node_spec
        return plan(app, node, method=request.baseline or "samullm", options=self.config.planner)

    def apply_plan(self, app_run_id: str, schedule: Schedule, reason: str) -> int:
        """Adopt `schedule` as the run's current plan (stored as a new version) and execute its
        first stage from the next tick, as if the planner had made it: an operator's override
        (the next node to finish re-plans as usual). Returns the plan version."""
        with self._lock:
            rt = self._app(app_run_id)
            first = schedule.first_stage()
            used: set[int] = set()
            for sn in first.nodes if first else []:
                if sn.node not in rt.nodes:
                    raise UserInputError(f"plan names node {sn.node!r}, which run {app_run_id} does not have")
                if len(sn.replicas) != sn.dp or any(len(r) != sn.tp for r in sn.replicas):
                    raise UserInputError(f"plan for {sn.node!r}: {len(sn.replicas)} replicas for TP{sn.tp} x DP{sn.dp}")
                ids = {d for r in sn.replicas for d in r}
                if not ids <= set(self.pool.device_ids) or ids & used:
                    raise UserInputError(f"plan for {sn.node!r}: devices {sorted(ids)} are unknown or used twice")
                used |= ids
            rt.plan = schedule
            rt.plan_version = self.store.add_plan(rt.id, schedule.model_dump(mode="json"), reason,
                                                  schedule.planning_seconds)
            return rt.plan_version

    def wait(self, app_run_id: str, timeout: float | None = None, poll_s: float = 0.5) -> api.AppStatus:
        """Block until the run is no longer running (or `timeout` s); its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = app_status(self.store, app_run_id)
            if status.state != "running" or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(poll_s)

    # -- runs ---------------------------------------------------------------------------------

    def _app(self, app_run_id: str) -> AppRt:
        """The run in memory; a run only in the store (ended before this runner started, or
        not resumed) is loaded, so that its failed nodes can be submitted again."""
        rt = self.apps.get(app_run_id)
        if rt is None:
            if self.store.get_app_run(app_run_id) is None:
                raise KeyError(app_run_id)
            self._resume(app_run_id)
            rt = self.apps.get(app_run_id)
            if rt is None:
                raise UserInputError(f"run {app_run_id!r} cannot be loaded: {self.store.get_app_run(app_run_id).error}")
        return rt

    def _active(self) -> list[AppRt]:
        return [rt for rt in self.apps.values() if not rt.done]

    def _build_app(self, app_run_id: str, graph: dict, context: dict, method: str, results_base: str) -> AppRt:
        return build_app(app_run_id, graph, context, method, results_base, self.home / "runs" / app_run_id,
                         self.config.devices.kind, self.config.cpu_kv_cache_bytes)

    def _resume(self, app_run_id: str) -> None:
        run = self.store.get_app_run(app_run_id)
        try:
            rt = self._build_app(run.id, run.graph, run.context or {}, run.method or "samullm",
                                 run.results_uri or self.results_uri)
        except UserInputError as err:  # its data moved away since: it cannot continue
            self.store.set_app_state(run.id, "failed", f"cannot resume: {err}")
            return
        for rec in self.store.node_records(run.id):
            n = rt.nodes.get(rec.node)
            if n is None:
                continue
            n.submitted, n.crashes, n.error = bool(rec.submitted), rec.crashes or 0, rec.error
            n.overrides = dict(rec.context or {})
            if rec.state in TERMINAL or run.state != "running":
                n.state = rec.state
            else:
                n.state = "waiting" if n.submitted else "pending"
                self.store.update_node(run.id, n.name, state=n.state)
            # Rows a dying worker wrote after the runner died reach the store now.
            results = rt.checkpoint(n.name).results()
            self.store.record_rows(run.id, n.name, [r.model_dump() for r in results.values()], None)
        for name, n in rt.nodes.items():
            if n.state == "success":
                rt.texts[name] = texts_by_row(rt.checkpoint(name).results().values())
        plans = self.store.plans(run.id)
        if plans:
            rt.plan, rt.plan_version = Schedule.model_validate(plans[-1].schedule), plans[-1].version
        self.apps[run.id] = rt
        if run.state != "running":  # loaded to be looked at or retried, not to run
            rt.done, rt.cancelled = True, run.state == "cancelled"
            return
        self.store.close_stages(run.id)
        self._replan_reasons.append("runner restarted")
        log.info("resumed run %s", run.id)

    def _recover_orphans(self) -> None:
        """Workers of launches a dead runner never closed: wait for them to exit (they stop when
        their parent dies), kill what lingers, then close those launches."""
        open_runs = self.store.open_node_runs()
        if not open_runs:
            return
        workers = [(int(p[0]), p[1]) for nr in open_runs for p in (nr.pids or ([[nr.pid, None]] if nr.pid else []))]
        found = wait_for_exit(workers, grace_s=self.config.orphan_grace_s)
        if found:
            log.warning("waited for %d engine workers left by a previous runner: %s", len(found), found)
        for nr in open_runs:
            self.store.update_node_run(nr.id, state="interrupted", ended_at=utcnow(),
                                       error="the runner stopped while this launch ran")

    def _submit(self, rt: AppRt, n: NodeRt, context: dict[str, Any]) -> None:
        if n.state == "success":
            return
        overrides = {k: v for k, v in (context or {}).items() if k in rt.context_keys}
        n.overrides = overrides
        n.checked_for_work = False
        if n.state in ("failed", "cancelled"):  # a retry: run it again, finished rows kept
            n.crashes, n.error = 0, None
            rt.cancelled = False
            if rt.done:
                rt.done = False
                self.store.set_app_state(rt.id, "running")
            self._replan_reasons.append(f"node {n.name} submitted again")
            n.state = "waiting"
        elif n.state == "pending":
            n.state = "waiting"
        n.submitted = True
        self.store.update_node(rt.id, n.name, submitted=True, context=overrides, state=n.state, crashes=n.crashes,
                               error=n.error, submitted_at=utcnow(), finished_at=None)

    def _set_node(self, rt: AppRt, n: NodeRt, state: str, **fields: Any) -> None:
        if state in ("waiting", "preempted"):
            n.checked_for_work = False
        n.state = state
        self.store.update_node(rt.id, n.name, state=state, **fields)

    # -- planning -----------------------------------------------------------------------------

    def _plan_apps(self, apps: list[AppRt]) -> list[Schedule]:
        return plan_runs(apps, self.store, self.observations, self.config, warm=self._warm_engines)

    def _planner_state(self, rt: AppRt) -> PlannerState:
        return planner_state(rt, self.store, self.observations, self._warm_engines(rt))

    def _warm_engines(self, rt: AppRt) -> list[WarmEngine]:
        """The run's idle engines, as the planner sees them."""
        return [WarmEngine(node=e.node, tp=e.placement.tp, dp=e.placement.dp,
                           replicas=[list(r) for r in e.placement.replicas])
                for e in self.idle if e.app_run_id == rt.id and not e.closing]

    def _store_plans(self, apps: list[AppRt], schedules: list[Schedule], reason: str, other_reason: str | None = None) -> None:
        for i, (rt, schedule) in enumerate(zip(apps, schedules)):
            why = reason if i == 0 or other_reason is None else other_reason
            rt.plan = schedule
            rt.plan_version = self.store.add_plan(rt.id, schedule.model_dump(mode="json"), why,
                                                  schedule.planning_seconds)

    def _has_work(self, rt: AppRt) -> bool:
        """Some node of the run still has rows to run (a node whose rows are all done but whose
        engines are still exiting has none: the planner would see nothing to plan)."""
        for n in rt.nodes.values():
            if n.state in TERMINAL:
                continue
            if n.rows is None or len(self.store.rows_done(rt.id, n.name)) < len(n.rows):
                return True
        return False

    def _replan_now(self, reason: str) -> None:
        active = [rt for rt in self._active() if not rt.cancelled and self._has_work(rt)]
        if not active:
            return
        try:
            schedules = self._plan_apps(active)
        except Exception as err:  # noqa: BLE001  (a planner bug must not stop the runner)
            # Keep executing the last plans and try again shortly (the state may be passing,
            # e.g. engines still shutting down); after a few failures the runs cannot go on.
            self._replan_failures += 1
            log.error("re-plan failed (%s), attempt %d: %s", reason, self._replan_failures, err,
                      exc_info=not isinstance(err, UserInputError))
            if self._replan_failures >= MAX_REPLAN_FAILURES:
                for rt in active:
                    self._fail_app(rt, f"planning failed: {err}")
                self._replan_failures = 0
            else:
                self._replan_at = time.monotonic() + REPLAN_RETRY_S
                self._replan_reasons.append(reason)
            return
        self._replan_failures = 0
        self._store_plans(active, schedules, reason)

    # -- the loop -----------------------------------------------------------------------------

    def tick(self) -> None:
        for rt in self._active():
            for n in rt.nodes.values():
                if n.launch is not None:
                    self._poll_launch(rt, n)
        if self._replan_reasons and time.monotonic() >= self._replan_at:
            reasons = "; ".join(dict.fromkeys(self._replan_reasons))
            self._replan_reasons.clear()
            self._replan_now(reasons)
        for rt in self._active():
            self._apply_plan(rt)
        self._tend_idle()
        for rt in self._active():
            self._track_stages(rt)
            self._check_done(rt)

    def _tend_idle(self) -> None:
        """Free the devices of idle engines that have exited; tell those the plan does not hand
        to a node to exit (not while a re-plan is pending: the plan that follows a node's end may
        want its engine)."""
        if not self._replan_reasons:
            by_run = {rt.id: rt for rt in self._active()}
            for engine in self.idle:
                rt = by_run.get(engine.app_run_id)
                if not engine.closing and (rt is None or rt.cancelled or not wanted(engine, self._planned_members(rt))):
                    engine.close()
        for engine in list(self.idle):
            if not engine.closing and not engine.alive():
                engine.close()  # one replica ended on its own (idle timeout, crash): not usable
            if engine.closing and engine.exited():
                for i, w in enumerate(engine.workers):
                    try:
                        w.wait(timeout=15)  # sweeps its process group
                    except Exception:  # noqa: BLE001
                        w.kill()
                    self.pool.release(engine.owner(i))
                self.idle.remove(engine)

    def _planned_members(self, rt: AppRt) -> list[list[tuple[str, Placement, bool]]]:
        """Per stage of the current plan: each member's engine key, placement and whether the
        stage launches it (any action but "continue"; preloads are not run, see reconcile).
        Nodes that have ended since the plan was made are left out."""
        if rt.plan is None:
            return []
        return [[(self._engine_key(rt, sn.node), Placement.from_stage_node(sn), sn.action != "continue")
                 for sn in stage.nodes
                 if sn.action != "preload" and sn.node in rt.nodes and rt.nodes[sn.node].state not in TERMINAL]
                for stage in rt.plan.stages]

    def _engine_key(self, rt: AppRt, name: str) -> str:
        spec = rt.app.node(name)
        return engine_key(spec.model, jobs.worker_engine_options(spec, self.config.devices.kind,
                                                                 self.config.cpu_kv_cache_bytes))

    def _apply_plan(self, rt: AppRt) -> None:
        if rt.plan is None or rt.cancelled:
            return
        first = rt.plan.first_stage()
        stage = stage_placements(first.nodes) if first else {}
        running = {name: n.launch.placement for name, n in rt.nodes.items() if n.launch and not n.launch.stopping}
        launchable = {name for name, n in rt.nodes.items() if self._launchable(rt, n)}
        for name in list(launchable):
            if self._complete_if_no_work(rt, rt.nodes[name]):
                launchable.discard(name)
        diff = diff_stage(stage, running, launchable)
        for name, why in diff.stop.items():
            self._stop_launch(rt, rt.nodes[name], why)
        for name, placement in diff.launch.items():
            self._try_launch(rt, rt.nodes[name], placement)
        self._fallback_launch(rt, launchable - set(diff.launch), bool(running or diff.launch))

    def _fallback_launch(self, rt: AppRt, waiting: set[str], busy: bool) -> None:
        """Keep a run from stalling when its first stage waits on nodes never submitted (an
        Airflow task that failed before submitting, say) while other nodes could run: after
        IDLE_FALLBACK_S with nothing of the run running, start those where a later stage of
        the plan puts them, if their devices are free."""
        if busy or not waiting or rt.plan is None or any(n.launch for n in rt.nodes.values()):
            rt.idle_since = None
            return
        now = time.monotonic()
        rt.idle_since = rt.idle_since or now
        if now - rt.idle_since < IDLE_FALLBACK_S:
            return
        for stage in rt.plan.stages[1:]:
            for sn in stage.nodes:
                n = rt.nodes.get(sn.node)
                if sn.node in waiting and n is not None and n.launch is None:
                    log.warning("%s/%s: the plan's first stage waits on unsubmitted nodes; starting it as "
                                "a later stage planned", rt.id, sn.node)
                    self._try_launch(rt, n, Placement.from_stage_node(sn))
        rt.idle_since = None

    def _complete_if_no_work(self, rt: AppRt, n: NodeRt) -> bool:
        """A launchable node without a row left succeeds at once (checked once each time it
        becomes launchable: a node that is not running gains no rows)."""
        if n.checked_for_work:
            return False
        n.checked_for_work = True
        if n.rows is None:
            n.rows = self._node_rows(rt, n)
        done = self.store.rows_done(rt.id, n.name)
        if any(r not in done for r in n.rows):
            return False
        self._succeed(rt, n, rt.checkpoint(n.name).results())
        return True

    def _launchable(self, rt: AppRt, n: NodeRt) -> bool:
        if not n.submitted or n.launch is not None or n.state not in ("waiting", "preempted"):
            return False
        return all(rt.nodes[u].state == "success" for u in rt.app.upstream(n.name))

    def _stop_launch(self, rt: AppRt, n: NodeRt, why: str) -> None:
        if n.launch.stopping:
            return
        log.info("%s/%s: stopping (%s)", rt.id, n.name, why)
        n.launch.request_stop(why)
        self.store.update_node_run(n.launch.node_run_id, state="stopping")
        self.store.add_event(n.launch.node_run_id, "stop_requested", {"reason": why})

    def _node_rows(self, rt: AppRt, n: NodeRt) -> list[str]:
        spec = rt.app.node(n.name)
        router = spec.route.router if spec.route else None
        rows = node_rows(rt.resolved, n.name, rt.texts.get(router) if router else None)
        self.store.update_node(rt.id, n.name, rows_total=len(rows))
        return rows

    def _try_launch(self, rt: AppRt, n: NodeRt, placement: Placement) -> None:
        owners = [(rt.id, n.name, i) for i in range(placement.dp)]
        key = self._engine_key(rt, n.name)
        warm = next((e for e in self.idle if not e.closing and e.app_run_id == rt.id and e.key == key
                     and e.placement == placement and e.alive()), None)
        if warm is None:
            for engine in self.idle:  # an idle engine on these devices makes way
                if set(engine.placement.devices) & set(placement.devices):
                    engine.close()
        got = []
        for owner, devices in zip(owners, placement.replicas if warm is None else ()):
            if not self.pool.try_acquire(owner, devices):
                for o in got:
                    self.pool.release(o)
                return  # its devices are still busy (an engine shutting down): next tick
            got.append(owner)
        try:
            self._launch(rt, n, placement, warm)
        except Exception as err:
            for o in owners:
                self.pool.release(o)
            if n.launch is not None:
                for r in n.launch.replicas:
                    r.kill()
                self.store.update_node_run(n.launch.node_run_id, ended_at=utcnow(), state="failed", error=str(err))
                n.launch = None
            log.exception("%s/%s: launch failed", rt.id, n.name)
            self._fail_node(rt, n, f"could not start its engines: {err}")

    def _launch(self, rt: AppRt, n: NodeRt, placement: Placement, warm: IdleEngine | None = None) -> None:
        """Start the node's engines on `placement` (its devices are held, or `warm`'s engines
        wait there: the node takes them over) for its missing rows."""
        if n.rows is None:
            n.rows = self._node_rows(rt, n)
        checkpoint = rt.checkpoint(n.name)
        done = checkpoint.done_ids()
        upstream = {u: rt.texts.get(u, {}) for u in rt.app.prompt_inputs(n.name)}
        rows, refused = [], []
        for row_id in (r for r in n.rows if r not in done):
            try:
                rows.append(Row(row_id=row_id, prompt=render_prompt(rt.resolved, n.name, row_id, upstream, n.overrides)))
            except UserInputError as err:  # this row cannot be asked: it fails alone
                refused.append(RowResult(row_id=row_id, text="", prompt_tokens=0, output_tokens=0,
                                         finish_reason="error", error=str(err), finished_at=time.time()))
        if refused:
            writer = ResultWriter(checkpoint.dir / f"part-runner-{time.time_ns()}.jsonl")
            writer.write(refused)
            writer.close()
            self.store.record_rows(rt.id, n.name, [r.model_dump() for r in refused], None)
        if not rows:  # nothing left to run (all done before, routed no rows, or all refused)
            if warm is None:
                for i in range(placement.dp):
                    self.pool.release((rt.id, n.name, i))
            self._succeed(rt, n, checkpoint.results())
            return
        if warm is not None and len(rows) < placement.dp:  # a replica would have no rows: start anew
            warm.close()
            return
        if warm is not None:
            for i in range(placement.dp):
                self.pool.transfer(warm.owner(i), (rt.id, n.name, i))
            self.idle.remove(warm)
        node_run = self.store.start_node_run(rt.id, n.name, placement.tp, placement.dp, placement.devices,
                                             rows_total=len(n.rows), rows_done=len(n.rows) - len(rows))
        shares = jobs.split_rows([r.row_id for r in rows], placement.dp)
        by_id = {r.row_id: r for r in rows}
        launch = Launch(attempt=node_run.attempt, node_run_id=node_run.id, placement=placement,
                        replicas=[Replica(i, devs, share) for i, (devs, share) in enumerate(zip(placement.replicas, shares))])
        n.launch = launch
        for rep in launch.replicas:
            if warm is not None:
                self._start_replica(rt, n, rep, [by_id[r] for r in rep.rows], warm.workers[rep.index])
            elif rep.rows:  # fewer rows than replicas: the rest stay idle (their devices held)
                self._start_replica(rt, n, rep, [by_id[r] for r in rep.rows])
        pids = launch.pids()
        self.store.update_node_run(node_run.id, replicas=[list(r) for r in placement.replicas], pids=pids,
                                   pid=pids[0][0] if pids else None, state="loading")
        self._set_node(rt, n, "loading")
        if warm is not None:  # loaded already: no Loaded event will come
            self.store.update_node_run(node_run.id, loaded_at=utcnow(), load_seconds=0.0, state="running")
            self.store.add_event(node_run.id, "took_over", {"engine_of": warm.node, "pids": [p[0] for p in pids]})
            self._set_node(rt, n, "running")
        log.info("%s/%s: launch %d, %s, %d rows%s", rt.id, n.name, launch.attempt, placement.describe(), len(rows),
                 f", on the engines {warm.node} left" if warm is not None else "")

    def _start_replica(self, rt: AppRt, n: NodeRt, rep: Replica, rows: list[Row], warm_worker=None) -> None:
        """Start the replica's worker, or hand its rows to `warm_worker` (same engine, waiting)."""
        checkpoint = rt.checkpoint(n.name)
        attempt = n.launch.attempt
        tag = f"{attempt:04d}-{rep.index:02d}-{rep.restarts:02d}"
        job = jobs.make_job(
            rt.app.node(n.name), n.launch.placement.tp, rep.devices, self.config.devices, rows,
            result_path=str(checkpoint.part_path(attempt, rep.index, rep.restarts)),
            iteration_log_path=str(checkpoint.dir / f"iterations-{tag}.jsonl"),
            cpu_kv_cache_bytes=self.config.cpu_kv_cache_bytes,
            progress_interval_s=self.config.progress_interval_s,
            handoff_dir=str(checkpoint.dir / f"handoffs-{tag}"),
            idle_timeout_s=self.config.idle_engine_timeout_s,
        )
        if warm_worker is not None:
            rep.take_over(warm_worker, Handoff(rows=rows, sampling=job.sampling, result_path=job.result_path,
                                               iteration_log_path=job.iteration_log_path))
        else:
            rep.start(job, checkpoint.dir / f"worker-{tag}")

    def _poll_launch(self, rt: AppRt, n: NodeRt, ending: bool = True) -> None:
        launch = n.launch
        for rep in launch.replicas:
            if rep.worker is None or rep.ended:
                continue
            for event in rep.new_events():
                self._on_event(rt, n, rep, event)
            self._record_new_rows(rt, n, rep)
            if rep.exited():
                rep.reap()
                for event in rep.new_events():
                    self._on_event(rt, n, rep, event)
                self._record_new_rows(rt, n, rep)
                self._on_replica_end(rt, n, rep)
            elif rep.waiting():  # rows done, engine kept: see _end_launch
                rep.settle_idle()
                self._on_replica_end(rt, n, rep)
            elif launch.stopping and time.monotonic() - launch.stop_sent_at > self.config.stop_timeout_s:
                rep.kill()
            elif (rep.loaded is None and not launch.stopping
                  and time.monotonic() - rep.started_mono > self.config.load_timeout_s):
                launch.failure = f"engine did not load within {self.config.load_timeout_s:g} s"
                launch.request_stop("load timeout")
        if ending and launch.ended:
            self._end_launch(rt, n)

    def _record_new_rows(self, rt: AppRt, n: NodeRt, rep: Replica) -> None:
        new = rep.tail.read_new() if rep.tail else []
        if new:
            self.store.record_rows(rt.id, n.name, [r.model_dump() for r in new], n.launch.node_run_id)

    def _on_event(self, rt: AppRt, n: NodeRt, rep: Replica, event) -> None:
        launch = n.launch
        if isinstance(event, Progress):
            self.store.update_node_run(launch.node_run_id, output_tokens=event.output_tokens)
            return
        payload = event.model_dump(mode="json")
        payload["replica"] = rep.index
        self.store.add_event(launch.node_run_id, event.event, payload)
        if isinstance(event, Loaded):
            rep.loaded = event
            load_s = max(0.0, event.time - rep.started_wall)
            self.store.update_node_run(launch.node_run_id, loaded_at=utcnow(), load_seconds=round(load_s, 3),
                                       state="running")
            if n.state == "loading" and not launch.stopping:
                self._set_node(rt, n, "running")
            spec = rt.app.node(n.name)
            options = jobs.worker_engine_options(spec, self.config.devices.kind, self.config.cpu_kv_cache_bytes)
            self.store.add_observation(spec.model, "engine_limits",
                                       feedback.engine_limits_payload(event, options.model_dump()),
                                       device=self.observations.device, tp=launch.placement.tp, app_run_id=rt.id)
            self.store.add_observation(spec.model, "load", {"seconds": round(load_s, 3), "load_s": event.load_s,
                                                            "import_s": event.import_s},
                                       device=self.observations.device, tp=launch.placement.tp, app_run_id=rt.id)

    def _on_replica_end(self, rt: AppRt, n: NodeRt, rep: Replica) -> None:
        launch = n.launch
        log.info("%s/%s replica %d ended: %s %s", rt.id, n.name, rep.index, rep.outcome, rep.message or "")
        if rep.outcome == "finished":
            self._observe_latency(rt, n, rep)
            return
        if rep.outcome == "stopped" or launch.stopping:
            return
        if rep.outcome == "load_error":
            launch.failure = f"engine failed to start: {rep.message}"
            launch.request_stop("a replica failed to start")
            return
        # crashed: start it again with its rows still missing, while allowed
        n.crashes += 1
        self.store.update_node(rt.id, n.name, crashes=n.crashes)
        self.store.add_event(launch.node_run_id, "crashed", {"replica": rep.index, "message": rep.message})
        if n.crashes > self.config.max_restarts:
            launch.failure = f"engine worker died {n.crashes} times; last: {rep.message}"
            launch.request_stop("engine keeps dying")
            return
        done = rt.checkpoint(n.name).done_ids()
        missing = [r for r in rep.rows if r not in done]
        if not missing:
            rep.outcome = "finished"
            return
        upstream = {u: rt.texts.get(u, {}) for u in rt.app.prompt_inputs(n.name)}
        rows = [Row(row_id=r, prompt=render_prompt(rt.resolved, n.name, r, upstream, n.overrides)) for r in missing]
        rep.restarts += 1
        log.warning("%s/%s: restarting replica %d with %d missing rows (%s)", rt.id, n.name, rep.index, len(rows),
                    rep.message)
        self._start_replica(rt, n, rep, rows)
        self.store.update_node_run(launch.node_run_id, pids=self._pids_of(launch, rt, n))

    def _observe_latency(self, rt: AppRt, n: NodeRt, rep: Replica) -> None:
        """Iteration latencies of a replica that ran to its end, for the latency correction."""
        if rep.finished is None or rep.finished.iterations == 0 or not rep.iteration_logs:
            return
        records = read_iterations(rep.iteration_logs[-1])
        if not records:
            return
        spec = rt.app.node(n.name)
        payload = feedback.latency_payload(records, rep.finished.elapsed_s)
        self.store.add_observation(spec.model, "latency", payload, device=self.observations.device,
                                   tp=n.launch.placement.tp, app_run_id=rt.id)

    def _observe_replicas(self, rt: AppRt, n: NodeRt, launch: Launch) -> None:
        """Run seconds of every replica of a DP launch, when each ran all its rows at one go."""
        reps = launch.replicas
        if len(reps) < 2 or any(r.finished is None or r.restarts or not r.rows for r in reps):
            return
        self.store.add_observation(rt.app.node(n.name).model, "replica_balance",
                                   feedback.replica_balance_payload([r.finished.elapsed_s for r in reps]),
                                   device=self.observations.device, tp=launch.placement.tp, app_run_id=rt.id)

    def _end_launch(self, rt: AppRt, n: NodeRt, shutdown: bool = False) -> None:
        launch = n.launch
        n.launch = None
        checkpoint = rt.checkpoint(n.name)
        results = checkpoint.results()
        self.store.record_rows(rt.id, n.name, [r.model_dump() for r in results.values()], launch.node_run_id)
        missing = [r for r in (n.rows or []) if r not in results]
        self._keep_engines(rt, n, launch, keep=not (shutdown or missing or launch.failure or launch.stopping
                                                     or rt.cancelled))
        outcomes = sorted({r.outcome or "not started" for r in launch.replicas if r.worker is not None})
        self.store.update_node_run(
            launch.node_run_id, ended_at=utcnow(), rows_done=len(results),
            state="failed" if launch.failure else ("stopped" if launch.stopping else "finished"),
            error=launch.failure or launch.stop_reason, pids=self._pids_of(launch, rt, n),
        )
        if shutdown:
            self._set_node(rt, n, "waiting" if n.submitted else "pending")
        elif rt.cancelled or launch.stop_reason == "cancelled":
            self._set_node(rt, n, "cancelled", finished_at=utcnow())
        elif launch.failure:
            self._fail_node(rt, n, launch.failure)
        elif not missing:
            self._observe_replicas(rt, n, launch)
            self._succeed(rt, n, results)
        elif launch.stopping:
            self._set_node(rt, n, "preempted")
        else:  # every replica finished, yet rows are missing (vLLM aborted them): try again
            n.crashes += 1
            self.store.update_node(rt.id, n.name, crashes=n.crashes)
            if n.crashes > self.config.max_restarts:
                self._fail_node(rt, n, f"{len(missing)} rows never finished (outcomes {outcomes})")
            else:
                self._set_node(rt, n, "waiting")

    def _keep_engines(self, rt: AppRt, n: NodeRt, launch: Launch, keep: bool) -> None:
        """Free the launch's devices; workers still up with their engine (idle replicas) become
        one idle engine holding them: kept for a node of the same model if every replica is,
        else told to exit."""
        idle = [r for r in launch.replicas if r.idle and r.worker is not None and r.worker.is_alive()]
        if not idle:
            for i in range(launch.placement.dp):
                self.pool.release((rt.id, n.name, i))
            return
        self._idle_serial += 1
        engine = IdleEngine(self._idle_serial, rt.id, n.name, self._engine_key(rt, n.name), launch.placement,
                            [r.worker for r in idle])
        for i, rep in enumerate(launch.replicas):
            if rep.idle and rep.worker in engine.workers:  # held on by the waiting worker
                self.pool.transfer((rt.id, n.name, i), engine.owner(engine.workers.index(rep.worker)))
            else:
                self.pool.release((rt.id, n.name, i))
        self.idle.append(engine)
        if not keep or len(idle) != launch.placement.dp:
            engine.close()

    def _pids_of(self, launch: Launch, rt: AppRt, n: NodeRt) -> list:
        known = next((r for r in self.store.node_runs(rt.id, n.name) if r.id == launch.node_run_id), None)
        pids = list(known.pids or []) if known else []
        for p in launch.pids():
            if p[0] not in [q[0] for q in pids]:
                pids.append(p)
        return pids

    def _succeed(self, rt: AppRt, n: NodeRt, results: dict[str, RowResult]) -> None:
        spec = rt.app.node(n.name)
        try:
            manifest = write_column(rt.results_base, rt.id, n.name, spec.model, n.rows, results)
        except Exception as err:
            self._fail_node(rt, n, f"cannot write its results to {rt.results_base}: {err}")
            return
        rt.texts[n.name] = texts_by_row(results[r] for r in n.rows)
        self.store.add_observation(spec.model, "output_lengths",
                                   feedback.output_lengths_payload((results[r] for r in n.rows), n.name),
                                   app_run_id=rt.id)
        if any(n.name in rt.app.prompt_inputs(d.name) for d in rt.app.nodes):  # a prompt reads its texts
            retokenized = feedback.retokenized_payload((results[r] for r in n.rows), n.name,
                                                       feedback.load_tokenizer(spec.model))
            if retokenized is not None:
                self.store.add_observation(spec.model, "retokenized", retokenized, app_run_id=rt.id)
        self._set_node(rt, n, "success", result_uri=manifest.uri, manifest_uri=manifest.manifest_uri,
                       finished_at=utcnow(), error=None)
        log.info("%s/%s: success, %d rows -> %s", rt.id, n.name, manifest.rows, manifest.uri)
        self._replan_reasons.append(f"node {n.name} finished")

    def _fail_node(self, rt: AppRt, n: NodeRt, error: str) -> None:
        log.error("%s/%s failed: %s", rt.id, n.name, error)
        n.error = error
        self._set_node(rt, n, "failed", error=error, finished_at=utcnow())
        for down in self._downstream(rt, n.name):
            d = rt.nodes[down]
            if d.state in TERMINAL:
                continue
            why = f"upstream node {n.name!r} failed"
            if d.launch is not None:
                d.launch.failure = why
                self._stop_launch(rt, d, why)
            else:
                d.error = why
                self._set_node(rt, d, "failed", error=why, finished_at=utcnow())
        self._replan_reasons.append(f"node {n.name} failed")

    def _downstream(self, rt: AppRt, name: str) -> list[str]:
        out, todo = [], [name]
        while todo:
            for d in rt.app.downstream(todo.pop()):
                if d not in out:
                    out.append(d)
                    todo.append(d)
        return out

    def _fail_app(self, rt: AppRt, error: str) -> None:
        for n in rt.nodes.values():
            if n.launch is not None:
                n.launch.failure = n.launch.failure or error
                self._stop_launch(rt, n, error)
            elif n.state not in TERMINAL:
                self._set_node(rt, n, "failed", error=error, finished_at=utcnow())

    def _track_stages(self, rt: AppRt) -> None:
        members = [
            StageMember(name, n.launch.placement.tp, n.launch.placement.dp, n.launch.placement.devices,
                        n.launch.node_run_id)
            for name, n in rt.nodes.items() if n.launch is not None
        ]
        change = rt.tracker.update(members)
        if change is None:
            return
        kind, now = change
        if kind == "close":
            self.store.close_stages(rt.id)
        else:
            self.store.open_stage(rt.id, rt.plan_version, [m.as_dict() for m in now])

    def _check_done(self, rt: AppRt) -> None:
        if rt.done or any(n.state not in TERMINAL or n.launch is not None for n in rt.nodes.values()):
            return
        if any(e.app_run_id == rt.id for e in self.idle):
            return  # a run ends with its engines gone and its devices free (_tend_idle)
        failed = {name: n.error for name, n in rt.nodes.items() if n.state == "failed"}
        if rt.cancelled or any(n.state == "cancelled" for n in rt.nodes.values()):
            state, error = "cancelled", None
        elif failed:
            state = "failed"
            error = "; ".join(f"{name}: {err}" for name, err in failed.items())
        else:
            state, error = "success", None
        rt.done = True
        self.store.close_stages(rt.id)
        self.store.set_app_state(rt.id, state, error)
        log.info("run %s: %s", rt.id, state)



def run_application(
    app: Application | dict,
    config: RunnerConfig,
    app_run_id: str | None = None,
    method: str = "samullm",
    timeout: float | None = None,
) -> api.AppView:
    """Run one application to its end with an in-process runner (every node submitted at once)
    and return its view: plans, actual stages, per-node figures. For scripts and benchmarks;
    `samullm run` is the same with progress bars."""
    graph = app.model_dump(mode="json", exclude_defaults=True) if isinstance(app, Application) else app
    run_id = app_run_id or f"{graph.get('name', 'app')}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    with Runner(config) as runner:
        runner.start()
        runner.register(api.RegisterApplication(app_run_id=run_id, application=graph, method=method), submit_all=True)
        runner.wait(run_id, timeout=timeout)
        return runner.view(run_id)
