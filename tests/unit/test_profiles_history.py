"""Segment labels, profiles and the type-2 history on tiny data, worked out by hand."""

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from microseg.features.catalog import load_catalog
from microseg.outputs.assign import update_history
from microseg.outputs.profiles import TYPICAL, build_profiles, label
from microseg.runtime import tables
from microseg.runtime.errors import MicrosegError

D1, D2, D3 = dt.date(2025, 1, 31), dt.date(2025, 2, 28), dt.date(2025, 3, 31)


def test_label_names_the_strongest_layer_features_in_catalog_words(make_config):
    catalog = load_catalog(make_config())
    features = ["monetary_365d", "recency_days", "discount_share", "tenure_days"]
    z = {"monetary_365d": 2.1, "recency_days": -0.7, "discount_share": 0.3, "tenure_days": None, "nps_latest": 5.0}
    assert label(z, features, catalog, top=3, min_z=0.5) == (
        "high spend, recent buyer",
        ["monetary_365d (+2.1)", "recency_days (-0.7)"],
    )
    assert label({"monetary_365d": 0.1}, features, catalog, top=3, min_z=0.5) == (TYPICAL, [])


def test_profiles_z_scores_medians_labels_and_k_anonymity(spark, make_config):
    cfg = make_config("profile.k_anonymity=2")
    catalog = load_catalog(cfg)
    spend = {"a": 400.0, "b": 400.0, "c": 100.0, "d": 100.0, "e": 250.0}
    features = spark.createDataFrame(
        [(c, m) for c, m in spend.items()], "customer_id STRING, monetary_365d DOUBLE"
    ).select(
        "customer_id",
        *[(F.col(f) if f == "monetary_365d" else F.lit(None).cast("double")).alias(f) for f in catalog.names],
    )
    assigned = spark.createDataFrame(
        [("a", "A"), ("b", "A"), ("c", "B"), ("d", "B"), ("e", "C")], "customer_id STRING, segment_id STRING"
    ).select("customer_id", F.lit("value").alias("layer"), F.lit("active").alias("macro_segment"), "segment_id")
    rows = {r["segment_id"]: r for r in build_profiles(assigned, features, catalog, cfg, D1).collect()}
    sd = math.sqrt((2 * 150**2 + 2 * 150**2) / 5)  # population: mean 250
    assert rows["A"]["z_monetary_365d"] == pytest.approx(150 / sd, abs=1e-4)
    assert rows["B"]["z_monetary_365d"] == pytest.approx(-150 / sd, abs=1e-4)
    assert (rows["A"]["mean_monetary_365d"], rows["A"]["median_monetary_365d"]) == (400.0, 400.0)
    assert (rows["A"]["label"], rows["B"]["label"]) == ("high spend", "low spend")
    assert (rows["A"]["size"], rows["A"]["share"], rows["C"]["size"]) == (2, 0.4, 1)
    assert rows["C"]["label"] is None and rows["C"]["mean_monetary_365d"] is None  # below k-anonymity


def assignments(spark, rows):
    return spark.createDataFrame(rows, "customer_id STRING, layer STRING, segment_id STRING, macro_segment STRING")


def history_rows(spark, cfg):
    rows = tables.read(spark, cfg, "gold.segment_history").collect()
    return sorted(
        (r["customer_id"], r["segment_id"], str(r["valid_from"]), str(r["valid_to"]), r["is_current"]) for r in rows
    )


def test_history_is_a_type_2_dimension_and_reruns_change_nothing(spark, make_config):
    cfg = make_config("train.layers.engagement=null")
    update_history(spark, cfg, assignments(spark, [("a", "value", "s1", "active"), ("b", "value", "s2", "active"),
                                                   ("d", "value", "s1", "active")]), D1)  # fmt: skip
    day2 = assignments(
        spark, [("a", "value", "s1", "active"), ("b", "value", "s3", "active"), ("c", "value", "s1", "new")]
    )
    counts = update_history(spark, cfg, day2, D2)
    assert counts == {"opened": 2, "closed": 2}  # b moved, c entered; b's and d's (left) rows closed
    expected = [
        ("a", "s1", str(D1), "None", True),
        ("b", "s2", str(D1), str(D2), False),
        ("b", "s3", str(D2), "None", True),
        ("c", "s1", str(D2), "None", True),
        ("d", "s1", str(D1), str(D2), False),
    ]
    assert history_rows(spark, cfg) == expected
    update_history(spark, cfg, day2, D2)  # the same snapshot again
    assert history_rows(spark, cfg) == expected
    with pytest.raises(MicrosegError, match="date order"):
        update_history(spark, cfg, day2, D1)
    before = [r for r in history_rows(spark, cfg) if r[0] == "a"]
    update_history(spark, cfg, assignments(spark, [("a", "value", "s1", "at_risk")]), D3)  # same segment: no new row
    assert [r for r in history_rows(spark, cfg) if r[0] == "a"] == before
