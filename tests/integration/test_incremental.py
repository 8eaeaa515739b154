"""Incremental silver on the real Online Retail data: 30 daily drops one by one equal a full refresh, and a
batch that fails the quality gate publishes nothing until its file is fixed. On generated data with every
source (a CRM with updates, web events with anonymous ids): added days, each merged into the identity map
rather than rebuilding it, equal a full refresh too."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from microseg.runtime import lake, tables
from microseg.runtime.config import DatagenConfig
from microseg.runtime.errors import DataQualityError
from microseg.stages import run_pipeline
from microseg.synthetic.daily import next_day

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


# -- generated data: every source, the identity map merged day by day -----------------------------------------------

ADDED_DAYS = 2
# A tenth of the generated rows a day (datagen's default is a hundredth): 300 customers then give a day about
# 24 CRM updates, 6 sign-ups and a few hundred web events, so the map's keys change every day.
DAY = DatagenConfig(partitions=2, day_share=0.1)


def test_added_days_merged_into_the_identity_map_equal_a_full_refresh(spark, tiny_generated, make_config, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_generated[0], data)  # the shared folder stays as generated
    cfg = make_config(f"sources.root={data}")
    assert quiet(spark, cfg).report("clean").info["identity"]["mode"] == "rebuild"  # the map is new
    for _ in range(ADDED_DAYS):
        next_day(spark, DAY, str(data))
        identity = quiet(spark, cfg).report("clean").info["identity"]
        assert identity["mode"] == "incremental", identity
        assert identity["keys_restaged"]["crm_id"] > 0 and identity["keys_restaged"]["anonymous_id"] > 0, identity
    # silver.customer_contact is written by ingest, which a full refresh does not repeat.
    cleaned = [t for t in lake.TABLES if t.layer == "silver" and t != lake.CUSTOMER_CONTACT]
    compared = [t for t in [*cleaned, lake.IDENTITY_CONFLICTS] if tables.exists(spark, cfg, t)]
    incremental = {t: tables.version(spark, cfg, t) for t in compared}

    refresh = quiet(spark, cfg, full_refresh=True)
    assert refresh.report("clean").info["identity"]["mode"] == "rebuild"
    for table in compared:
        before = at_version(spark, cfg, table, incremental[table])
        after = tables.read(spark, cfg, table)
        assert after.count() == before.count(), table
        assert same_rows(before, after), f"{table}: incremental and full refresh differ"
    assert tables.read(spark, cfg, lake.IDENTITY_MAP).where(F.col("key_type") == "anonymous_id").count() > 0
    # Anonymous events (no customer_ref in bronze) of the added days are linked, through logins of theirs or of
    # earlier days (the map's keys).
    anonymous = tables.read(spark, cfg, "bronze.web_events").where(F.col("customer_ref").isNull())
    linked = tables.read(spark, cfg, lake.WEB_EVENTS).where(F.col("customer_id").isNotNull())
    added = linked.join(anonymous.select("event_id"), "event_id", "left_semi").where(F.col("event_id").contains("-D"))
    assert added.count() > 0
