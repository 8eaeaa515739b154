"""The CRM read from a real PostgreSQL server over JDBC, through a source mapping."""

from __future__ import annotations

import shutil
import time
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


def table_scans(spark, url: str) -> int:
    """How many times PostgreSQL has read public.crm_customers from start to end (its statistics)."""
    query = "(SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'crm_customers') s"
    time.sleep(1.5)  # a backend reports its statistics within a second of its last query
    return spark.read.jdbc(url, query, properties={"user": "microseg", "driver": "org.postgresql.Driver"}).first()[0]


def test_crm_ingested_from_postgres_over_jdbc(spark, pg_config, postgres):
    cfg, loaded = pg_config
    scans = table_scans(spark, postgres)
    result = run_pipeline(spark, cfg, stages=["ingest", "clean", "quality"], progress=lambda _: None)
    # One read of the live table per run: bronze and the contact table hold the same state of it.
    assert table_scans(spark, postgres) == scans + 1
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
