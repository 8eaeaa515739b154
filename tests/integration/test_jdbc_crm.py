"""The CRM read from a real PostgreSQL server over JDBC, through a source mapping."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from microseg.ingest.mapping import load_mapping
from microseg.ingest.readers import read_source
from microseg.runtime import tables
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL server on 127.0.0.1 (trust auth), stopped when the module ends."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb); install them with: apt-get install postgresql")
    # initdb refuses to run as root: run the server as the postgres user the Debian package creates.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="microseg-pg-"))
    root.chmod(0o777)
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "microseg"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    # -t: pg_ctl's own 60 s wait for the server is short on a busy machine; slow is fine, red is not.
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                    "-t", "600", "start"], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"jdbc:postgresql://127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_config(spark, postgres, make_config, tmp_path_factory, generated):
    """A conf folder whose mapping has one source, the CRM, read from PostgreSQL.

    The other sources of the synthetic mapping would only add file ingestion and cleaning, which the other
    integration tests cover; every assertion here is about the CRM. Its rows come from the integration
    tests' generated data (tests/integration/conftest.py), only read here.
    """
    data, _ = generated
    conf = tmp_path_factory.mktemp("conf")
    shutil.copytree(REPO / "conf", conf, dirs_exist_ok=True)
    mapping = yaml.safe_load((REPO / "conf" / "sources" / "synthetic.yaml").read_text())
    crm = mapping["sources"]["crm_customers"]
    crm.update(
        format="jdbc",
        options={"url": postgres, "dbtable": "public.crm_customers", "user": "microseg",
                 "password": "${MS_TEST_PG_PASSWORD:-unused}", "driver": "org.postgresql.Driver"},
    )  # fmt: skip
    del crm["path"]
    mapping["sources"] = {"crm_customers": crm}
    (conf / "sources" / "postgres.yaml").write_text(yaml.safe_dump(mapping))
    cfg = make_config(f"sources.root={data}", "sources.mapping=postgres")
    cfg = cfg.model_copy(update={"conf_dir": str(conf)})
    # Load the CRM table with the rows of the generated CRM file that parse (a database holds no broken lines).
    csv_spec = load_mapping(make_config(f"sources.root={data}"))["crm_customers"]
    rows = read_source(spark, make_config(f"sources.root={data}"), csv_spec).where(F.col("_corrupt_record").isNull())
    rows = rows.drop("_corrupt_record", "_source_file").cache()
    rows.write.jdbc(
        postgres,
        "public.crm_customers",
        mode="overwrite",
        properties={"user": "microseg", "driver": "org.postgresql.Driver"},
    )
    return cfg, rows


def test_crm_ingested_from_postgres_over_jdbc(spark, pg_config):
    cfg, loaded = pg_config
    result = run_pipeline(spark, cfg, stages=["ingest", "clean"], progress=lambda _: None)
    entry = next(e for e in result.report("ingest").entries if e.source == "crm_customers")
    assert entry.rows_written == loaded.count()
    bronze = tables.read(spark, cfg, "bronze.crm_customers")
    assert "email" not in bronze.columns and "email_hash" in bronze.columns
    assert bronze.select("_source_file").first()[0].startswith("jdbc:postgresql://127.0.0.1:")
    customers = tables.read(spark, cfg, "silver.customers")
    assert customers.count() == loaded.select("customer_ref").distinct().count()
    contact = tables.read(spark, cfg, "silver.customer_contact")
    assert contact.where(F.col("email").endswith("@example.com")).count() > 0

    # A second run reads a fresh snapshot and replaces it: the CRM rows are not doubled.
    run_pipeline(spark, cfg, stages=["ingest"], progress=lambda _: None)
    assert tables.read(spark, cfg, "bronze.crm_customers").count() == loaded.count()
