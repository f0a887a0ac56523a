"""A throw-away PostgreSQL server from Debian's `postgresql` package, for Postgres-backed tests.

`initdb` refuses to run as root, so under root the cluster belongs to the `postgres` user the
package creates, and every server command runs through `runuser`. The server listens on loopback
only, on a free port, with trust authentication, and its socket lives in its own folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from samullm.airflow_env import free_port


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class TempPostgres:
    base: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (make test does it)")
        self.port = self.port or free_port()
        self.data = self.base / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str) -> None:
        result = subprocess.run([*self.as_postgres, *argv], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"),
                  "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1", "-w", "start")

    def create_database(self, name: str, owner: str = "samullm", password: str = "samullm") -> str:
        """A database and its owner; returns its SQLAlchemy URL (psycopg2 driver)."""
        psql = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        exists = subprocess.run([*psql, "-tAc", f"select 1 from pg_roles where rolname='{owner}'"],
                                capture_output=True, text=True, check=True).stdout.strip()
        if not exists:
            subprocess.run([*psql, "-c", f"create user {owner} password '{password}'"], check=True, capture_output=True)
        subprocess.run([*psql, "-c", f"create database {name} owner {owner}"], check=True, capture_output=True)
        return f"postgresql+psycopg2://{owner}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
