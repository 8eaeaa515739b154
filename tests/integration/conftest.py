"""Generated data and a lake up to features, made once per run and shared by the integration modules.

Datagen and the ingest, clean, quality, features and value stages are most of what a pipeline run costs
on this data, and none of them reads the train settings in which test_pipeline_e2e and test_segmentation
differ. So both start from one data set and one featured lake: each module trains, assigns and
profiles on a copy of its own (``copy_lake``), whose MLflow database and artifacts its first train
creates, so its assertions about runs, versions, aliases and history see only its own work.
test_jdbc_crm loads its PostgreSQL table from the same generated CRM file; it and test_sql_endpoint share
one PostgreSQL server.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import free_port

from microseg.runtime.config import DatagenConfig
from microseg.stages import run_pipeline
from microseg.synthetic.datagen import generate

CUSTOMERS = 3000
SEED = 5
# One lapsed customer in ten comes back with a burst of big orders on the day after AS_OF (datagen's
# end_date): test_segmentation follows these movers into its next day's snapshot; at AS_OF (and any
# date before) the burst is in the future and changes nothing.
MOVERS, MOVER_DAYS = 0.1, 1
AS_OF = dt.date(2025, 12, 31)
SHARED_STAGES = ["ingest", "clean", "quality", "features", "value"]


@pytest.fixture(scope="session")
def generated(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The shared source folder (3,000 customers, planted groups and movers) and its manifest."""
    data = tmp_path_factory.mktemp("generated")
    spec = DatagenConfig(customers=CUSTOMERS, seed=SEED, partitions=2, movers=MOVERS, mover_days=MOVER_DAYS)
    manifest = generate(spark, spec, str(data))
    assert manifest["customers"] == CUSTOMERS
    return data, manifest


@pytest.fixture(scope="session")
def tiny_generated(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """300 generated customers, for the whole pipeline run in processes of their own (Spark Connect, S3)."""
    data = tmp_path_factory.mktemp("tiny-generated")
    manifest = generate(spark, DatagenConfig(customers=300, seed=11, partitions=2), str(data))
    return data, manifest


@pytest.fixture(scope="session")
def featured_lake(spark, generated, make_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake after ingest, clean, quality, features and value as of AS_OF on the shared data; read it through a
    copy."""
    data, _ = generated
    lake = tmp_path_factory.mktemp("featured") / "lake"
    cfg = make_config(f"sources.root={data}", lake=lake)
    run_pipeline(spark, cfg, as_of=AS_OF, stages=SHARED_STAGES)
    return lake


@pytest.fixture(scope="session")
def copy_lake(featured_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``copy_lake(name)``: a fresh copy of the featured lake (Delta tables are path-based and relative)."""

    def copy(name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "lake"
        shutil.copytree(featured_lake, target)
        return target

    return copy


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass(frozen=True)
class Postgres:
    bindir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database on the server (user microseg); its JDBC URL."""
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "microseg", name],
                       check=True, capture_output=True)  # fmt: skip
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server on 127.0.0.1 (trust auth, user microseg) for the run: the JDBC source test and
    the PostgreSQL-backed Hive metastore of the SQL endpoint test; stopped at the end."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb); install them with: apt-get install postgresql")
    # initdb refuses to run as root: run the server as the postgres user the Debian package creates.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="microseg-pg-"))
    root.chmod(0o777)
    data, port = root / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "microseg"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    # -t: pg_ctl's own 60 s wait for the server is short on a busy machine; slow is fine, red is not.
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                    "-t", "600", "start"], check=True, capture_output=True)  # fmt: skip
    try:
        yield Postgres(bindir, port)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(postgres_server: Postgres) -> str:
    """The JDBC URL of the server's postgres database."""
    return postgres_server.url()
