"""Incremental silver on the real Online Retail data: 30 daily drops one by one equal a full refresh, and a
batch that fails the quality gate publishes nothing until its file is fixed."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from microseg.runtime import lake, tables
from microseg.runtime.errors import DataQualityError
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

RETAIL = Path(__file__).resolve().parents[3] / "shared" / "data" / "online_retail"
DAYS = sorted(RETAIL.glob("*.csv"))[:30]
GATE = ["ingest", "clean", "quality"]
SILVER = [lake.CUSTOMERS, lake.ORDERS, lake.ORDER_ITEMS, lake.IDENTITY_MAP]


def quiet(spark, cfg, **options) -> object:
    return run_pipeline(spark, cfg, stages=GATE, progress=lambda _: None, **options)


def at_version(spark, cfg, table, version: int) -> DataFrame:
    return spark.read.format("delta").option("versionAsOf", version).load(tables.table_path(cfg, table))


def same_rows(a: DataFrame, b: DataFrame) -> bool:
    return a.exceptAll(b).isEmpty() and b.exceptAll(a).isEmpty()


@pytest.fixture(scope="module")
def replay(spark, make_config, tmp_path_factory):
    """The first 30 trading days dropped one file per run through ingest, clean and quality."""
    if len(DAYS) < 30:
        pytest.skip(f"the Online Retail data is not at {RETAIL}")
    drop = tmp_path_factory.mktemp("retail-drop")
    cfg = make_config("sources.mapping=online_retail", f"sources.root={drop}", "run.as_of=2011-01-31")
    for day in DAYS:
        shutil.copy(day, drop)
        details = quiet(spark, cfg).report("clean").entries[0].details
        assert (details["mode"], details["batches"]) == ("incremental", 1), day.name
    return cfg, drop


def test_thirty_daily_drops_equal_a_full_refresh(spark, replay):
    cfg, _ = replay
    incremental = {t: tables.version(spark, cfg, t) for t in SILVER}
    lines = sum(1 for day in DAYS for _ in csv.DictReader(day.open(newline="")))
    bronze = tables.read(spark, cfg, "bronze.online_retail")
    assert bronze.count() == lines
    # Every silver table took one commit per day (its first write made it, with its comment: two).
    assert incremental[lake.ORDERS] >= len(DAYS)

    refresh = quiet(spark, cfg, full_refresh=True)
    assert refresh.report("clean").entries[0].details["mode"] == "rebuild"
    for table in SILVER:
        before = at_version(spark, cfg, table, incremental[table])
        after = tables.read(spark, cfg, table)
        assert after.count() == before.count() > 0, table
        assert same_rows(before, after), f"{table}: incremental and full refresh differ"
    orders = tables.read(spark, cfg, lake.ORDERS)
    assert orders.groupBy("order_id").count().where("count > 1").isEmpty()


def test_a_rerun_with_no_new_file_commits_nothing(spark, replay):
    cfg, _ = replay
    versions = {t: tables.version(spark, cfg, t) for t in SILVER}
    result = quiet(spark, cfg)
    assert result.report("clean").entries[0].details["mode"] == "nothing new"
    assert result.report("quality").info["staged"].startswith("nothing staged")
    assert {t: tables.version(spark, cfg, t) for t in SILVER} == versions


def test_a_critical_batch_publishes_nothing_until_its_file_is_fixed(spark, replay):
    cfg, drop = replay
    silver_before = {t: tables.version(spark, cfg, t) for t in SILVER}
    quarantine_before = tables.version(spark, cfg, "quarantine.online_retail")
    # A new day with lines of an invoice published on the first day, other quantities (so not lines delivered
    # twice, which would be quarantined as duplicate_key): order_id_unique (critical) fails on the whole table.
    with DAYS[0].open(newline="") as handle:
        first = list(csv.DictReader(handle))
    invoice = next(r["InvoiceNo"] for r in first if r["CustomerID"].strip() and not r["InvoiceNo"].startswith("C"))
    repeated = [{**r, "Quantity": str(int(r["Quantity"]) + 1)} for r in first if r["InvoiceNo"] == invoice]
    next_day = RETAIL / sorted(p.name for p in RETAIL.glob("*.csv"))[30]
    with next_day.open(newline="") as handle:
        fresh = list(csv.DictReader(handle))
    bad = drop / next_day.name
    write_csv(bad, fresh + repeated)

    with pytest.raises(DataQualityError, match="order_id_unique"):
        quiet(spark, cfg)
    assert {t: tables.version(spark, cfg, t) for t in SILVER} == silver_before
    assert tables.version(spark, cfg, "quarantine.online_retail") == quarantine_before
    states = tables.read(spark, cfg, lake.BATCHES).groupBy("batch_id").agg(F.max_by("status", "logged_at").alias("s"))
    assert [r["s"] for r in states.collect()].count("failed") == 1

    orders_before = tables.read(spark, cfg, lake.ORDERS).count()
    write_csv(bad, fresh)  # the file fixed in place: ingest takes it again, its earlier rows leave bronze
    result = quiet(spark, cfg)
    assert result.report("clean").entries[0].details["mode"] == "incremental"
    orders = tables.read(spark, cfg, lake.ORDERS)
    assert orders.groupBy("order_id").count().where("count > 1").isEmpty()
    invoices = {r["InvoiceNo"] for r in fresh if r["CustomerID"].strip()}
    assert orders_before < orders.count() <= orders_before + len(invoices)


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
