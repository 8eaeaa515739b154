"""The real Online Retail data through the online_retail mapping: daily incremental ingestion and its rules."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from microseg.runtime import tables
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

RETAIL = Path(__file__).resolve().parents[3] / "shared" / "data" / "online_retail"
DAYS = sorted(RETAIL.glob("*.csv"))[:5]


def csv_facts(files: list[Path]) -> dict:
    """Counts worked out with Python's csv module, independently of Spark and the mapping."""
    rows = no_key = repeated = 0
    returns, lines = set(), set()
    for path in files:
        with path.open(newline="") as handle:
            for record in csv.DictReader(handle):
                rows += 1
                line = tuple(record[k] for k in ("InvoiceNo", "StockCode", "Quantity", "UnitPrice"))  # the keys
                if not record["CustomerID"].strip():
                    no_key += 1
                elif line in lines:
                    repeated += 1
                elif record["InvoiceNo"].startswith("C"):
                    returns.add(record["InvoiceNo"])
                lines.add(line)
    return {"rows": rows, "no_key": no_key, "returns": len(returns), "repeated": repeated}


@pytest.fixture(scope="module")
def retail(make_config, tmp_path_factory):
    if len(DAYS) < 5:
        pytest.skip(f"the Online Retail data is not at {RETAIL}")
    drop = tmp_path_factory.mktemp("drop")
    cfg = make_config("sources.mapping=online_retail", f"sources.root={drop}", "run.as_of=2010-12-31")
    return cfg, drop


def test_daily_drops_ingest_only_new_files(spark, retail):
    cfg, drop = retail
    for day in DAYS[:3]:
        shutil.copy(day, drop)
    first = run_pipeline(spark, cfg, stages=["ingest"], progress=lambda _: None).report("ingest").entries[0]
    assert (first.details["files_new"], first.rows_written) == (3, csv_facts(DAYS[:3])["rows"])

    for day in DAYS[3:]:
        shutil.copy(day, drop)
    second = run_pipeline(spark, cfg, stages=["ingest"], progress=lambda _: None).report("ingest").entries[0]
    assert (second.details["files_found"], second.details["files_new"]) == (5, 2)
    assert second.rows_written == csv_facts(DAYS[3:])["rows"]
    assert tables.read(spark, cfg, "bronze.online_retail").count() == csv_facts(DAYS)["rows"]
    assert tables.read(spark, cfg, "ops.ingest_log").count() == 5

    version = tables.version(spark, cfg, "bronze.online_retail")
    third = run_pipeline(spark, cfg, stages=["ingest"], progress=lambda _: None).report("ingest").entries[0]
    assert (third.details["files_new"], third.rows_written) == (0, 0)
    assert tables.version(spark, cfg, "bronze.online_retail") == version


def test_lines_without_customer_are_quarantined_and_cancellations_are_returns(spark, retail):
    cfg, _ = retail
    run_pipeline(spark, cfg, stages=["clean", "quality"], progress=lambda _: None)
    facts = csv_facts(DAYS)
    quarantine = tables.read(spark, cfg, "quarantine.online_retail")
    rules = {r["rule"]: r["count"] for r in quarantine.groupBy("rule").count().collect()}
    assert facts["repeated"] > 0  # the log repeats some lines: each kept once
    assert rules == {"no_customer_key": facts["no_key"], "duplicate_key": facts["repeated"]}
    assert tables.read(spark, cfg, "silver.order_items").count() == facts["rows"] - facts["no_key"] - facts["repeated"]
    orders = tables.read(spark, cfg, "silver.orders")
    assert orders.where(F.col("is_return")).count() == facts["returns"]
    items = tables.read(spark, cfg, "silver.order_items")
    assert items.where(F.col("product_id") == "POST").where(F.col("is_product")).count() == 0
    assert items.where(F.col("product_id") == "85123A").where(~F.col("is_product")).count() == 0


def test_features_the_data_supports_and_the_rest_null_with_reason(spark, retail):
    """Order features from the invoices; web, email, service, discount and category features null, and said so."""
    import re

    from microseg.stages import summary

    cfg, _ = retail
    result = run_pipeline(spark, cfg, stages=["features"], progress=lambda _: None)
    unsupported = result.report("features").info["features_unsupported"]
    for name in ("web_sessions_90d", "email_open_rate", "support_tickets_365d", "nps_latest", "discount_share",
                 "offer_redemption_rate", "category_entropy", "category_share_home"):  # fmt: skip
        assert name in unsupported, name
    for name in ("recency_days", "frequency_365d", "monetary_365d", "return_rate", "channel_share_web"):
        assert name not in unsupported, name
    assert "feature nps_latest is null for everyone: the data set has no survey_responses source" in summary(
        result, cfg
    )

    # Independently from the CSV files: sale invoices and product spend of customers with a key.
    product = re.compile(r"^[0-9]{5}[A-Za-z]{0,2}$")
    invoices, spend, lines = set(), 0.0, set()
    for path in DAYS:
        with path.open(newline="") as handle:
            for r in csv.DictReader(handle):
                line = tuple(r[k] for k in ("InvoiceNo", "StockCode", "Quantity", "UnitPrice"))
                repeated, _ = line in lines, lines.add(line)
                if repeated:  # quarantined as duplicate_key
                    continue
                if r["CustomerID"].strip() and not r["InvoiceNo"].startswith("C") and float(r["UnitPrice"]) >= 0:
                    invoices.add(r["InvoiceNo"])
                    if product.match(r["StockCode"]):
                        spend += int(r["Quantity"]) * float(r["UnitPrice"]) * cfg.sources.currency_rates["GBP"]
    features = tables.read(spark, cfg, "gold.customer_features").where(F.col("as_of") == "2010-12-31")
    totals = features.agg(F.sum("frequency_365d").alias("n"), F.sum("monetary_365d").alias("m")).first()
    assert totals["n"] == len(invoices)
    assert totals["m"] == pytest.approx(spend, abs=1.0)
    row = features.where(F.col("web_sessions_90d").isNull()).select("null_reasons").first()
    assert row["null_reasons"]["web_sessions_90d"] == "the data set has no web_events source"
