"""End to end on Postgres: Airflow's metadata and the SamuLLM store on a real PostgreSQL server
(Debian's package, started here as a throw-away cluster), with real Airflow processes, a real
runner and a real vLLM CPU engine. (test_e2e.py covers SQLite.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

from samullm.airflow_rest import quote  # noqa: E402
from samullm.results import read_column  # noqa: E402
from tests.airflow.postgres import TempPostgres, postgres_bin  # noqa: E402
from tests.airflow.stack import make_dags_folder, start_stack  # noqa: E402

DAG_ID = "samullm_small"


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed (make test installs Debian's postgresql with apt)")
    # Not under pytest's tmp dir: the server runs as the `postgres` user, which cannot enter root's.
    server = TempPostgres(Path(tempfile.mkdtemp(prefix="samullm-pg-")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_stack(postgres, tmp_path_factory):
    base = tmp_path_factory.mktemp("pg")
    airflow_db = postgres.create_database("airflow")
    store_db = postgres.create_database("samullm_store")
    dags = make_dags_folder(base / "dags", [], ["samullm_small.py"])
    stack = start_stack(base, dags, db_url=airflow_db, store_url=store_db)
    yield stack, airflow_db, store_db
    stack.stop()


def test_dag_run_on_postgres_metadata_and_store(pg_stack):
    import sqlalchemy as sa

    stack, airflow_db, store_db = pg_stack
    rest = stack.rest
    rest.wait_for_dag(DAG_ID)
    rest.unpause(DAG_ID)
    run_id = rest.trigger(DAG_ID)["dag_run_id"]
    run = rest.wait_for_run(DAG_ID, run_id, timeout=600, poll=2.0)
    if run["state"] != "success":
        log = rest.task_log(DAG_ID, run_id, "answer", 1)
        pytest.fail(f"run {run['state']}:\n{log[-3000:]}\n{stack.diagnostics()}")
    manifest = rest.xcom(DAG_ID, run_id, "answer")
    assert manifest["rows"] == 4
    assert len(read_column(manifest["result_uri"])) == 4

    airflow = sa.create_engine(airflow_db)
    with airflow.connect() as conn:
        state = conn.execute(sa.text("select state from dag_run where dag_id = :d and run_id = :r"),
                             {"d": DAG_ID, "r": run_id}).scalar_one()
    assert state == "success"
    store = sa.create_engine(store_db)
    with store.connect() as conn:
        app = conn.execute(sa.text("select state from samullm_app_run where id = :i"),
                           {"i": manifest["app_run_id"]}).scalar_one()
        rows = conn.execute(sa.text("select count(*) from samullm_row_result where app_run_id = :i and node = 'answer'"),
                            {"i": manifest["app_run_id"]}).scalar_one()
        plans = conn.execute(sa.text("select count(*) from samullm_plan where app_run_id = :i"),
                             {"i": manifest["app_run_id"]}).scalar_one()
    assert app == "success" and rows == 4 and plans >= 1
    chart = rest.get(f"/samullm/api/runs/{DAG_ID}/{quote(run_id)}")
    assert chart["stages_actual"] >= 1 and chart["rows"][0]["rows_done"] == 4
    airflow.dispose()
    store.dispose()
