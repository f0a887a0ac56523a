"""The runtime's record: application runs, plans, stages, node runs, rows done, engine events and
observed statistics, in SQLAlchemy tables (SQLite by default, any SQLAlchemy URL such as Postgres).

Result texts live in the node's result file (see `samullm.results`); the store keeps which rows
are done and their token counts, so that a restarted node, runner or Airflow task can tell what
is left without reading result files, and the UI can show progress.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Boolean,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DEFAULT_URL_ENV = "SAMULLM_STORE_URL"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class AppRun(Base):
    """One execution of an application (an Airflow DAG run, or one `samullm run`)."""

    __tablename__ = "samullm_app_run"
    id: Mapped[str] = mapped_column(String(250), primary_key=True)
    name: Mapped[str] = mapped_column(String(250))
    graph: Mapped[dict[str, Any]] = mapped_column(JSON)
    node_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default="running")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Where final result columns go (local path or fsspec URL); None: the runner's default.
    results_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    method: Mapped[str | None] = mapped_column(String(100), nullable=True)  # planner method
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # prompt values


class NodeRecord(Base):
    """One node of one application run, across all its engine launches: submitted or not, its
    state as clients see it, where its results went. (`NodeRun` is one launch.)"""

    __tablename__ = "samullm_node"
    app_run_id: Mapped[str] = mapped_column(
        ForeignKey("samullm_app_run.id", ondelete="CASCADE"), primary_key=True
    )
    node: Mapped[str] = mapped_column(String(250), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    submitted: Mapped[bool] = mapped_column(Boolean, default=False)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    rows_total: Mapped[int | None] = mapped_column(Integer, nullable=True)  # known once runnable
    crashes: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PlanRecord(Base):
    """A plan (the planner's schedule as JSON) made at the start or at a re-plan."""

    __tablename__ = "samullm_plan"
    __table_args__ = (UniqueConstraint("app_run_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_run_id: Mapped[str] = mapped_column(ForeignKey("samullm_app_run.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(250))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    planning_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    schedule: Mapped[dict[str, Any]] = mapped_column(JSON)


class StageRecord(Base):
    """A stage as it actually ran: which node runs overlapped, from when to when."""

    __tablename__ = "samullm_stage"
    __table_args__ = (UniqueConstraint("app_run_id", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_run_id: Mapped[str] = mapped_column(ForeignKey("samullm_app_run.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    plan_version: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[list[Any]] = mapped_column(JSON)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class NodeRun(Base):
    """One engine worker's life for one node: its plan, devices, progress and outcome."""

    __tablename__ = "samullm_node_run"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_run_id: Mapped[str] = mapped_column(ForeignKey("samullm_app_run.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(250))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(20), default="starting")
    tp: Mapped[int] = mapped_column(Integer, default=1)
    dp: Mapped[int] = mapped_column(Integer, default=1)
    device_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    replicas: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # ids per replica
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Every worker process this launch started: [pid, process create time] (to tell a pid
    # reused by another process from ours when a restarted runner looks for orphans).
    pids: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    load_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    loaded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class RowResult(Base):
    """A row finished by a node. The primary key makes every row count once."""

    __tablename__ = "samullm_row_result"
    app_run_id: Mapped[str] = mapped_column(
        ForeignKey("samullm_app_run.id", ondelete="CASCADE"), primary_key=True
    )
    node: Mapped[str] = mapped_column(String(250), primary_key=True)
    row_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    node_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EngineEvent(Base):
    """What an engine worker reported (started, loaded, progress, finished, error, stopped)."""

    __tablename__ = "samullm_engine_event"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_run_id: Mapped[int] = mapped_column(ForeignKey("samullm_node_run.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ObservedStat(Base):
    """A statistic this installation observed, fed back into later estimates.

    kind "output_lengths": payload {"lengths": [...], "censored": [...]} for `model`.
    kind "latency": payload {"iterations": [[batch fields..., seconds], ...]} for (model, tp, device).
    kind "engine_limits": payload {max_model_len, max_num_seqs, max_num_batched_tokens,
      block_size, kv_cache_blocks, options} as an engine of (model, tp, device) reported them.
    kind "load": payload {"seconds": from worker start to engine loaded, "load_s", "import_s"}.
    kind "retokenized": payload {"node", "generated": output tokens, "retokenized": tokens of the
      same texts encoded again} for `model` (what its outputs cost inside a downstream prompt).
    kind "replica_balance": payload {"dp", "elapsed_s": [per replica]} of a DP node run whose
      replicas all ran their rows to the end, on `device` (the replicas' speeds differ when the
      devices do not, e.g. CPU cores shared with other processes).
    """

    __tablename__ = "samullm_observed_stat"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(500), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    tp: Mapped[int | None] = mapped_column(Integer, nullable=True)
    app_run_id: Mapped[str | None] = mapped_column(String(250), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def default_store_url(home: str | os.PathLike[str] | None = None) -> str:
    """`SAMULLM_STORE_URL` if set, else a SQLite file under `home` (default ./.samullm)."""
    url = os.environ.get(DEFAULT_URL_ENV)
    if url:
        return url
    base = Path(home or os.environ.get("SAMULLM_HOME", ".samullm")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'store.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the UI read while the runner writes; the busy timeout rides out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_schema(engine: Engine, attempts: int = 5) -> None:
    """Create the tables that do not exist yet. Several processes may open a new store at once
    (the runner, the Airflow plugin, a test polling it): the check and the CREATE are not one
    atomic step, so a process can lose the race ("table ... already exists"); it then checks
    again, which finds the tables the other made."""
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _add_missing_columns(engine: Engine) -> None:
    """Add columns this version defines that an older store's tables lack (all nullable or
    defaulted on insert), so a store made by an earlier version keeps working."""
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


class Store:
    """Thin, typed access to the tables; every method is its own transaction."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_store_url()
        self.engine: Engine = create_engine(self.url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _create_schema(self.engine)
        _add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # -- application runs -------------------------------------------------------------------

    def register_app_run(
        self,
        app_run_id: str,
        name: str,
        graph: dict[str, Any],
        node_spec: dict[str, Any],
        *,
        nodes: Sequence[str] = (),
        results_uri: str | None = None,
        labels: dict[str, Any] | None = None,
        method: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> tuple[AppRun, bool]:
        """Create the run (and a pending record per node in `nodes`) if new; return it and
        whether it was created (idempotent: an existing run is returned unchanged)."""
        with self.session() as s:
            existing = s.get(AppRun, app_run_id)
            if existing is not None:
                return existing, False
            run = AppRun(
                id=app_run_id, name=name, graph=graph, node_spec=node_spec,
                results_uri=results_uri, labels=labels or {}, method=method, context=context or {},
            )
            s.add(run)
            s.flush()  # the nodes' foreign key needs the run first
            s.add_all(NodeRecord(app_run_id=app_run_id, node=n, state="pending") for n in nodes)
            return run, True

    def get_app_run(self, app_run_id: str) -> AppRun | None:
        with self.session() as s:
            return s.get(AppRun, app_run_id)

    def app_runs(self, states: Sequence[str] | None = None) -> list[AppRun]:
        with self.session() as s:
            query = select(AppRun).order_by(AppRun.created_at)
            if states:
                query = query.where(AppRun.state.in_(states))
            return list(s.scalars(query))

    def set_app_state(self, app_run_id: str, state: str, error: str | None = None) -> None:
        with self.session() as s:
            run = s.get(AppRun, app_run_id)
            if run is None:
                raise KeyError(app_run_id)
            run.state = state
            run.error = error
            if state in ("success", "failed", "cancelled"):
                run.finished_at = utcnow()

    # -- nodes of a run --------------------------------------------------------------------

    def node_records(self, app_run_id: str) -> list[NodeRecord]:
        with self.session() as s:
            query = select(NodeRecord).where(NodeRecord.app_run_id == app_run_id)
            return list(s.scalars(query))

    def get_node(self, app_run_id: str, node: str) -> NodeRecord | None:
        with self.session() as s:
            return s.get(NodeRecord, (app_run_id, node))

    def update_node(self, app_run_id: str, node: str, **fields: Any) -> NodeRecord:
        with self.session() as s:
            record = s.get(NodeRecord, (app_run_id, node))
            if record is None:
                raise KeyError((app_run_id, node))
            for key, value in fields.items():
                setattr(record, key, value)
            return record

    # -- plans and stages -------------------------------------------------------------------

    def add_plan(
        self, app_run_id: str, schedule: dict[str, Any], reason: str, planning_seconds: float
    ) -> int:
        """Store a new plan version and return its number (1 for the first)."""
        with self.session() as s:
            last = s.scalar(
                select(func.max(PlanRecord.version)).where(PlanRecord.app_run_id == app_run_id)
            )
            version = (last or 0) + 1
            s.add(
                PlanRecord(
                    app_run_id=app_run_id,
                    version=version,
                    reason=reason,
                    schedule=schedule,
                    planning_seconds=planning_seconds,
                )
            )
            return version

    def plans(self, app_run_id: str) -> list[PlanRecord]:
        with self.session() as s:
            query = select(PlanRecord).where(PlanRecord.app_run_id == app_run_id)
            return list(s.scalars(query.order_by(PlanRecord.version)))

    def open_stage(self, app_run_id: str, plan_version: int, nodes: list[Any]) -> int:
        """Close the current stage (if any) and open the next; return its index."""
        with self.session() as s:
            current = s.scalar(
                select(StageRecord)
                .where(StageRecord.app_run_id == app_run_id, StageRecord.ended_at.is_(None))
                .order_by(StageRecord.index.desc())
            )
            now = utcnow()
            if current is not None:
                current.ended_at = now
            last = s.scalar(
                select(func.max(StageRecord.index)).where(StageRecord.app_run_id == app_run_id)
            )
            index = 0 if last is None else last + 1
            s.add(
                StageRecord(
                    app_run_id=app_run_id,
                    index=index,
                    plan_version=plan_version,
                    nodes=nodes,
                    started_at=now,
                )
            )
            return index

    def close_stages(self, app_run_id: str) -> None:
        with self.session() as s:
            for stage in s.scalars(
                select(StageRecord).where(
                    StageRecord.app_run_id == app_run_id, StageRecord.ended_at.is_(None)
                )
            ):
                stage.ended_at = utcnow()

    def stages(self, app_run_id: str) -> list[StageRecord]:
        with self.session() as s:
            query = select(StageRecord).where(StageRecord.app_run_id == app_run_id)
            return list(s.scalars(query.order_by(StageRecord.index)))

    # -- node runs and events ---------------------------------------------------------------

    def start_node_run(
        self,
        app_run_id: str,
        node: str,
        tp: int,
        dp: int,
        device_ids: Sequence[int],
        rows_total: int,
        rows_done: int,
    ) -> NodeRun:
        with self.session() as s:
            attempts = s.scalar(
                select(func.count())
                .select_from(NodeRun)
                .where(NodeRun.app_run_id == app_run_id, NodeRun.node == node)
            )
            run = NodeRun(
                app_run_id=app_run_id,
                node=node,
                attempt=(attempts or 0) + 1,
                tp=tp,
                dp=dp,
                device_ids=list(device_ids),
                rows_total=rows_total,
                rows_done=rows_done,
            )
            s.add(run)
            s.flush()
            return run

    def update_node_run(self, node_run_id: int, **fields: Any) -> None:
        with self.session() as s:
            run = s.get(NodeRun, node_run_id)
            if run is None:
                raise KeyError(node_run_id)
            for key, value in fields.items():
                setattr(run, key, value)

    def open_node_runs(self) -> list[NodeRun]:
        """Launches of any run that never recorded an end (their workers may still live)."""
        with self.session() as s:
            query = select(NodeRun).where(NodeRun.ended_at.is_(None))
            return list(s.scalars(query.order_by(NodeRun.id)))

    def node_runs(self, app_run_id: str, node: str | None = None) -> list[NodeRun]:
        with self.session() as s:
            query = select(NodeRun).where(NodeRun.app_run_id == app_run_id)
            if node is not None:
                query = query.where(NodeRun.node == node)
            return list(s.scalars(query.order_by(NodeRun.id)))

    def add_event(self, node_run_id: int, kind: str, payload: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            s.add(EngineEvent(node_run_id=node_run_id, kind=kind, payload=payload or {}))

    def events(self, node_run_id: int) -> list[EngineEvent]:
        with self.session() as s:
            query = select(EngineEvent).where(EngineEvent.node_run_id == node_run_id)
            return list(s.scalars(query.order_by(EngineEvent.id)))

    # -- rows -------------------------------------------------------------------------------

    def record_rows(
        self, app_run_id: str, node: str, rows: Iterable[dict[str, Any]], node_run_id: int | None
    ) -> int:
        """Record finished rows; a row already recorded is left as it is. Returns rows added."""
        values = [
            {
                "app_run_id": app_run_id,
                "node": node,
                "row_id": str(row["row_id"]),
                "node_run_id": node_run_id,
                "prompt_tokens": int(row.get("prompt_tokens") or 0),
                "output_tokens": int(row.get("output_tokens") or 0),
                "finish_reason": row.get("finish_reason"),
                "error": row.get("error"),
                "finished_at": utcnow(),
            }
            for row in rows
        ]
        if not values:
            return 0
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            insert = sqlite.insert(RowResult).on_conflict_do_nothing()
        elif dialect == "postgresql":
            insert = postgresql.insert(RowResult).on_conflict_do_nothing()
        else:  # portable fallback: skip the ones already there
            with self.session() as s:
                known = self.rows_done_in(s, app_run_id, node)
                fresh = [v for v in values if v["row_id"] not in known]
                s.add_all(RowResult(**v) for v in fresh)
                return len(fresh)
        with self.session() as s:
            before = self._row_count(s, app_run_id, node)
            s.connection().execute(insert, values)
            return self._row_count(s, app_run_id, node) - before

    @staticmethod
    def _row_count(s: Session, app_run_id: str, node: str) -> int:
        query = select(func.count()).where(
            RowResult.app_run_id == app_run_id, RowResult.node == node
        )
        return int(s.scalar(query) or 0)

    @staticmethod
    def rows_done_in(s: Session, app_run_id: str, node: str) -> set[str]:
        query = select(RowResult.row_id).where(
            RowResult.app_run_id == app_run_id, RowResult.node == node
        )
        return set(s.scalars(query))

    def rows_done(self, app_run_id: str, node: str) -> set[str]:
        with self.session() as s:
            return self.rows_done_in(s, app_run_id, node)

    def row_counts(self, app_run_id: str) -> dict[str, dict[str, int]]:
        """Per node: rows done, rows failed, prompt and output tokens."""
        with self.session() as s:
            query = (
                select(
                    RowResult.node,
                    func.count(),
                    func.count(RowResult.error),
                    func.coalesce(func.sum(RowResult.prompt_tokens), 0),
                    func.coalesce(func.sum(RowResult.output_tokens), 0),
                )
                .where(RowResult.app_run_id == app_run_id)
                .group_by(RowResult.node)
            )
            return {
                node: {
                    "rows": int(rows),
                    "failed_rows": int(failed),
                    "prompt_tokens": int(ptoks),
                    "output_tokens": int(otoks),
                }
                for node, rows, failed, ptoks, otoks in s.execute(query)
            }

    def output_lengths(self, app_run_id: str, node: str) -> list[tuple[int, str | None]]:
        """(output tokens, finish reason) of every successful row of a node."""
        with self.session() as s:
            query = select(RowResult.output_tokens, RowResult.finish_reason).where(
                RowResult.app_run_id == app_run_id,
                RowResult.node == node,
                RowResult.error.is_(None),
            )
            return [(int(n), reason) for n, reason in s.execute(query)]

    def output_tokens_by_row(self, app_run_id: str, node: str) -> dict[str, int]:
        """Row id -> output tokens of every successful row of a node."""
        with self.session() as s:
            query = select(RowResult.row_id, RowResult.output_tokens).where(
                RowResult.app_run_id == app_run_id,
                RowResult.node == node,
                RowResult.error.is_(None),
            )
            return {row_id: int(n) for row_id, n in s.execute(query)}

    def failure_reasons(self, app_run_id: str, node: str, limit: int = 5) -> list[tuple[str, int]]:
        """The most frequent per-row failure reasons of a node, with their counts."""
        with self.session() as s:
            count = func.count().label("n")
            query = (
                select(RowResult.error, count)
                .where(
                    RowResult.app_run_id == app_run_id,
                    RowResult.node == node,
                    RowResult.error.is_not(None),
                )
                .group_by(RowResult.error)
                .order_by(count.desc())
                .limit(limit)
            )
            return [(str(error), int(n)) for error, n in s.execute(query)]

    # -- observed statistics ----------------------------------------------------------------

    def add_observation(
        self,
        model: str,
        kind: str,
        payload: dict[str, Any],
        device: str | None = None,
        tp: int | None = None,
        app_run_id: str | None = None,
    ) -> None:
        with self.session() as s:
            s.add(
                ObservedStat(
                    model=model,
                    kind=kind,
                    payload=payload,
                    device=device,
                    tp=tp,
                    app_run_id=app_run_id,
                )
            )

    def observations(
        self, model: str | None, kind: str, device: str | None = None, tp: int | None = None
    ) -> list[ObservedStat]:
        """Observations of `kind` in the order they were made (`model` None: of every model)."""
        with self.session() as s:
            query = select(ObservedStat).where(ObservedStat.kind == kind)
            if model is not None:
                query = query.where(ObservedStat.model == model)
            if device is not None:
                query = query.where(ObservedStat.device == device)
            if tp is not None:
                query = query.where(ObservedStat.tp == tp)
            return list(s.scalars(query.order_by(ObservedStat.id)))
