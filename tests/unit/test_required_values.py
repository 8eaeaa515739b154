"""Required values, implausible event times and returns as a mapping rule, on tiny hand-built feeds."""

import datetime as dt

import pytest
from pydantic import ValidationError
from pyspark.sql import functions as F

from microseg.clean.intake import intake
from microseg.clean.orders import clean_order_lines
from microseg.clean.staging import BatchCounts, Manifest
from microseg.ingest.mapping import SourceSpec, canonical
from microseg.quality.rules import Rule, flag_rules
from microseg.quality.stage import rejected_batches
from microseg.runtime.errors import ConfigError

INGESTED = dt.datetime(2026, 1, 1)
EARLIEST = dt.date(1990, 1, 1)
# A feed of text columns that the mapping parses, as a customer's own CSV mapping would.
BRONZE = (
    "inv STRING, cust STRING, day STRING, sku STRING, qty STRING, price STRING, "
    "_corrupt_record STRING, _source_file STRING, _ingested_at TIMESTAMP, _batch_id STRING"
)
COLUMNS = {
    "order_id": "inv",
    "customer_ref": "cust",
    "order_ts": "try_to_timestamp(day, 'dd/MM/yyyy')",
    "product_id": "sku",
    "quantity": "try_cast(qty AS INT)",
    "unit_price": "try_cast(price AS DOUBLE)",
    "currency": "'GBP'",
}


def line(inv, day="01/05/2011", qty="2", price="2.5", cust="17850", corrupt=None):
    return (inv, cust, day, "85123A", qty, price, corrupt, "f.csv", INGESTED, "b-1")


def spec(**extra) -> SourceSpec:
    fields = {
        "name": "shop",
        "entity": "order_lines",
        "format": "csv",
        "path": "x",
        "schema": "inv STRING",
        "keys": ["inv"],
    }
    return SourceSpec(**{**fields, "columns": COLUMNS, **extra})


def test_empty_unparseable_and_implausible_values_are_quarantined_with_the_raw_value(spark):
    rows = [
        line("1"),
        line("2", day=None),
        line("3", day="  "),
        line("4", day="31/13/2011"),
        line("5", day="01/05/1897"),
        line("6", price=""),
        line("7", qty="two"),
        line(None),
        line("9", day=None, corrupt="9,17850,,85123A"),  # a broken line: malformed wins over what it lacks
    ]
    mapped = canonical(spark.createDataFrame(rows, BRONZE), spec(), "conf/sources/shop.yaml")
    flagged = intake(mapped, "order_lines", EARLIEST)
    got = {r["order_id"]: (r["_rule"], r["_reason"]) for r in flagged.collect()}
    assert got == {
        "1": (None, None),
        "2": ("missing_order_ts", "order_ts is empty"),
        "3": ("missing_order_ts", "order_ts is empty"),
        "4": ("unparseable_order_ts", "order_ts could not be read from day='31/13/2011'"),
        "5": (
            "implausible_timestamp",
            "order_ts 1897-05-01 00:00:00 is before sources.earliest_event (1990-01-01)",
        ),
        "6": ("missing_unit_price", "unit_price is empty"),
        "7": ("unparseable_quantity", "quantity could not be read from qty='two'"),
        None: ("missing_order_id", "order_id is empty"),
        "9": ("malformed_record", "line could not be parsed with the source schema"),
    }
    assert not [c for c in flagged.columns if c.startswith("_raw_")]


def test_an_earlier_flag_wins_over_later_rules(spark):
    df = spark.createDataFrame(
        [(1, "first", "r1"), (-1, None, None), (2, None, None)], "a INT, _rule STRING, _reason STRING"
    )
    flagged = flag_rules(df, [Rule("negative", F.concat(F.lit("a="), F.col("a").cast("string")), F.col("a") < 0)])
    assert sorted((r["a"], r["_rule"], r["_reason"]) for r in flagged.collect()) == [
        (-1, "negative", "a=-1"),
        (1, "first", "r1"),
        (2, None, None),
    ]


def lines_of(spark, source_spec, rows):
    mapped = canonical(spark.createDataFrame(rows, BRONZE), source_spec, "conf/sources/shop.yaml")
    flagged = clean_order_lines(intake(mapped, "order_lines", EARLIEST), None, {"GBP": 1.0}, None)
    return {r["order_id"]: (r["_rule"], r["is_return"]) for r in flagged.collect()}


def test_returns_are_what_the_mapping_says(spark):
    rows = [line("C100"), line("C101", qty="-1"), line("102", qty="-3")]
    # No returns_when: no row is a return, whatever its id; a negative quantity is quarantined, naming the option.
    assert lines_of(spark, spec(), rows) == {
        "C100": (None, False),
        "C101": ("negative_quantity", False),
        "102": ("negative_quantity", False),
    }
    assert lines_of(spark, spec(returns_when="quantity < 0"), rows) == {
        "C100": (None, False),
        "C101": (None, True),
        "102": (None, True),
    }
    assert lines_of(spark, spec(returns_when="order_id LIKE 'C%'"), rows) == {
        "C100": (None, True),
        "C101": (None, True),
        "102": ("negative_quantity", False),
    }


def test_returns_when_is_checked(spark):
    with pytest.raises(ValidationError, match="returns_when applies to entities"):
        SourceSpec(name="w", entity="web_events", format="csv", schema="a STRING", returns_when="a = 'x'")
    with pytest.raises(ValidationError, match="returns_when"):
        spec(columns={**COLUMNS, "is_return": "qty < 0"})
    bronze = spark.createDataFrame([line("1")], BRONZE)
    with pytest.raises(ConfigError) as err:
        canonical(bronze, spec(returns_when="kind = 'return'"), "conf/sources/shop.yaml")
    assert all(s in str(err.value) for s in ("conf/sources/shop.yaml", "shop", "returns_when", "kind = 'return'"))


def test_a_batch_fails_when_its_rejected_share_passes_the_threshold(make_config):
    cfg = make_config()  # quality.max_rejected_share: 0.05
    manifest = Manifest("run-1")
    manifest.batches = {
        "shop": {
            "b-1": BatchCounts(100, {"missing_order_ts": 5}),  # 5.0%: not more than the threshold
            "b-2": BatchCounts(40, {"missing_order_ts": 3, "negative_quantity": 1, "no_customer_key": 30}),
        },
        "guests": {"b-3": BatchCounts(40, {"no_customer_key": 30, "negative_price": 1})},
        "lenient": {"b-4": BatchCounts(10, {"missing_amount": 2})},
        # A feed of CRM updates: older versions superseded in the batch are not rejections.
        "crm": {"b-5": BatchCounts(20, {"superseded_duplicate": 8, "malformed_record": 1})},
    }
    specs = {
        "shop": spec(),
        "guests": spec(expected_rules=["no_customer_key"]),
        "lenient": spec(max_rejected_share=0.25),
        "crm": spec(),
    }
    failures, highest = rejected_batches(cfg, manifest, specs)
    assert failures == [
        "source shop batch b-2: 34 of 40 rows (85.0%) quarantined by clean, more than max_rejected_share 5.0%; "
        "top rules: no_customer_key (30), missing_order_ts (3), negative_quantity (1)"
    ]
    assert highest == {"crm": 0.05, "guests": 0.025, "lenient": 0.2, "shop": 0.85}


def test_orders_returns_and_required_amount(spark):
    orders = SourceSpec(
        name="orders", entity="orders", format="parquet", schema="order_id STRING", returns_when="order_type = 'return'"
    )
    schema = (
        "order_id STRING, customer_ref STRING, order_ts TIMESTAMP, currency STRING, amount DOUBLE, order_type STRING, "
        "_corrupt_record STRING, _source_file STRING, _ingested_at TIMESTAMP, _batch_id STRING"
    )
    ts = dt.datetime(2025, 5, 1)
    rows = [
        ("O1", "C1", ts, "EUR", 10.0, "sale"),
        ("O2", "C1", ts, "EUR", 4.0, "return"),
        ("O3", "C1", ts, "EUR", None, "sale"),
        ("O4", None, ts, "EUR", 1.0, "sale"),
        ("O5", "C1", dt.datetime(1989, 12, 31, 23, 59), "EUR", 1.0, None),
    ]
    bronze = spark.createDataFrame([(*r, None, "f.parquet", INGESTED, "b-1") for r in rows], schema)
    flagged = intake(canonical(bronze, orders, "conf/sources/synthetic.yaml"), "orders", EARLIEST)
    got = {r["order_id"]: (r["_rule"], r["_reason"], r["is_return"]) for r in flagged.collect()}
    assert got == {
        "O1": (None, None, False),
        "O2": (None, None, True),
        "O3": ("missing_amount", "amount is empty", False),
        "O4": ("missing_customer_ref", "customer_ref is empty", False),
        "O5": (
            "implausible_timestamp",
            "order_ts 1989-12-31 23:59:00 is before sources.earliest_event (1990-01-01)",
            False,
        ),
    }
