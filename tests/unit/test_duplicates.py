"""Keys delivered twice: the first delivery (earliest batch, then file) is kept, later ones are duplicate_key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from microseg.clean.duplicates import KEY, first_deliveries, flag_duplicates, record_key
from microseg.ingest.mapping import SourceSpec

SPEC = SourceSpec(name="shop", entity="order_lines", format="csv", path="x", schema="inv STRING", keys=["inv", "sku"])
SCHEMA = "inv STRING, sku STRING, qty INT, _source_file STRING, _batch_id STRING, _rule STRING, _reason STRING"


def flagged(spark, rows, earlier=None):
    df = spark.createDataFrame(rows, SCHEMA).withColumn(KEY, record_key(SPEC))
    before = None
    if earlier is not None:
        before = first_deliveries(spark.createDataFrame(earlier, SCHEMA), SPEC, spark.createDataFrame(rows, SCHEMA))
    result = flag_duplicates(df, before)
    assert KEY not in result.columns and "_key_rank" not in result.columns
    return {(r["inv"], r["sku"], r["qty"], r["_source_file"]): (r["_rule"], r["_reason"]) for r in result.collect()}


def test_a_key_repeated_in_the_batch_or_delivered_before_is_quarantined_naming_the_first_batch(spark):
    rows = [
        ("1", "A", 1, "f2.csv", "b-2", None, None),
        ("1", "A", 1, "f1.csv", "b-2", None, None),  # the same line twice in one drop: f1 comes first
        ("1", "B", 5, "f1.csv", "b-2", None, None),  # the same invoice, another product: a line of its own
        ("2", "A", 1, "f1.csv", "b-2", None, None),  # delivered in batch b-1 already
        ("3", "A", 1, "f1.csv", "b-2", "missing_order_ts", "order_ts is empty"),  # its own rule stays
        ("3", "A", 1, "f2.csv", "b-2", None, None),
    ]
    earlier = [("2", "A", 9, "old.csv", "b-1", None, None), ("4", "A", 1, "old.csv", "b-0", None, None)]
    found = flagged(spark, rows, earlier)
    # Of the earlier keys, only those the new rows meet again are grouped.
    met = first_deliveries(spark.createDataFrame(earlier, SCHEMA), SPEC, spark.createDataFrame(rows, SCHEMA))
    assert [tuple(r) for r in met.collect()] == [('{"inv":"2","sku":"A"}', "b-1")]
    assert {k: rule for k, (rule, _) in found.items()} == {
        ("1", "A", 1, "f2.csv"): "duplicate_key",
        ("1", "A", 1, "f1.csv"): None,
        ("1", "B", 5, "f1.csv"): None,
        ("2", "A", 1, "f1.csv"): "duplicate_key",
        ("3", "A", 1, "f1.csv"): "missing_order_ts",
        ("3", "A", 1, "f2.csv"): "duplicate_key",  # the first delivery was rejected: this is still a second one
    }
    assert found[("2", "A", 1, "f1.csv")][1] == 'key {"inv":"2","sku":"A"} was delivered before, first in batch b-1'
    assert found[("1", "A", 1, "f2.csv")][1].endswith("first in batch b-2")


def test_a_key_with_an_empty_column_delivered_before_is_found_again(spark):
    """The earlier keys are matched on the columns as read, an empty value matching an empty value, as their JSON
    does ({"sku":"C"} for both)."""
    rows = [(None, "C", 1, "f1.csv", "b-2", None, None), (None, "D", 1, "f1.csv", "b-2", None, None)]
    earlier = [(None, "C", 9, "old.csv", "b-1", None, None), ("", "D", 9, "old.csv", "b-1", None, None)]
    met = first_deliveries(spark.createDataFrame(earlier, SCHEMA), SPEC, spark.createDataFrame(rows, SCHEMA))
    assert [tuple(r) for r in met.collect()] == [('{"sku":"C"}', "b-1")]
    assert {k[1]: rule for k, (rule, _) in flagged(spark, rows, earlier).items()} == {"C": "duplicate_key", "D": None}


def test_the_same_rows_give_the_same_duplicates_however_they_are_batched(spark):
    """A daily run meeting earlier batches and a rebuild meeting every batch at once quarantine the same rows."""
    day1 = [("1", "A", 1, "d1.csv", "b-1", None, None), ("2", "A", 1, "d1.csv", "b-1", None, None)]
    day2 = [("1", "A", 2, "d2.csv", "b-2", None, None), ("3", "A", 1, "d2.csv", "b-2", None, None)]
    rebuilt = flagged(spark, day1 + day2)
    daily = {**flagged(spark, day1), **flagged(spark, day2, earlier=day1)}
    assert {k: v[0] for k, v in rebuilt.items()} == {k: v[0] for k, v in daily.items()}
    assert rebuilt[("1", "A", 2, "d2.csv")][0] == "duplicate_key"


def test_an_order_lines_source_must_declare_its_keys():
    with pytest.raises(ValidationError, match=r"order_lines source declares no keys.*keys: \[order_id, line_number\]"):
        SourceSpec(name="shop", entity="order_lines", format="csv", path="x", schema="inv STRING")
