"""Segment labels, profiles and the type-2 history on tiny data, worked out by hand."""

import datetime as dt
import math
import random
from fractions import Fraction

import pytest
from pyspark.sql import functions as F

from microseg.features.catalog import load_catalog
from microseg.outputs.assign import update_history
from microseg.outputs.profiles import TYPICAL, _round, build_profiles, distinct_labels, label
from microseg.runtime import tables
from microseg.runtime.errors import MicrosegError

D1, D2, D3 = dt.date(2025, 1, 31), dt.date(2025, 2, 28), dt.date(2025, 3, 31)


def test_label_names_the_strongest_layer_features_as_comparisons_within_the_macro_segment(make_config):
    catalog = load_catalog(make_config())
    features = ["monetary_365d", "recency_days", "discount_share", "tenure_days"]
    z = {"monetary_365d": 2.1, "recency_days": -0.7, "discount_share": 0.3, "tenure_days": None, "nps_latest": 5.0}
    assert label(z, features, catalog, top=3, min_z=0.5, macro="churned") == (
        "spends more and more recent than other churned customers",
        ["monetary_365d (+2.1)", "recency_days (-0.7)"],
    )
    assert label({"monetary_365d": 0.1}, features, catalog, top=3, min_z=0.5, macro="at_risk") == (
        f"{TYPICAL} of the at-risk customers",
        [],
    )
    # Without a macro segment (train.by_macro: false) the comparison is with every other customer.
    assert label({"monetary_365d": -1.0}, features, catalog, top=3, min_z=0.5)[0] == "spends less than other customers"


def test_labels_within_a_macro_segment_are_distinct_by_a_deterministic_tie_break(make_config):
    catalog = load_catalog(make_config())
    features = ["recency_days", "monetary_365d", "frequency_365d"]
    zs = {
        "value-churned-0": {"recency_days": -1.2, "monetary_365d": 0.2, "frequency_365d": 0.1},
        "value-churned-1": {"recency_days": -1.0, "monetary_365d": -0.3, "frequency_365d": 0.0},
        "value-churned-2": {"recency_days": 1.5, "monetary_365d": 0.0, "frequency_365d": 0.0},
        # Same direction as 0 on every feature: only the segment id tells them apart.
        "value-churned-3": {"recency_days": -0.9, "monetary_365d": 0.1, "frequency_365d": 0.05},
    }
    labels = distinct_labels(zs, features, catalog, top=1, min_z=0.5, macro="churned")
    assert labels == {
        "value-churned-0": (
            "more recent, spends more and buys more often than other churned customers (segment value-churned-0)",
            ["recency_days (-1.2)", "monetary_365d (+0.2)", "frequency_365d (+0.1)"],
        ),
        "value-churned-1": (
            "more recent and spends less than other churned customers",
            ["recency_days (-1.0)", "monetary_365d (-0.3)"],
        ),
        "value-churned-2": ("less recent than other churned customers", ["recency_days (+1.5)"]),
        "value-churned-3": (
            "more recent, spends more and buys more often than other churned customers (segment value-churned-3)",
            ["recency_days (-0.9)", "monetary_365d (+0.1)", "frequency_365d (+0.1)"],
        ),
    }
    assert distinct_labels(zs, features, catalog, top=1, min_z=0.5, macro="churned") == labels  # deterministic


def test_three_churned_segments_get_three_within_macro_labels(spark, make_config):
    """Every churned customer is lapsed against the population; the labels compare them with each other."""
    cfg = make_config("profile.k_anonymity=1", "profile.top_features=1")
    catalog = load_catalog(cfg)
    # recency: active customers 5-15 days, churned 300-500; spend: churned 10-30, active 500.
    values = {
        "a1": ("active", "A", 5.0, 500.0), "a2": ("active", "A", 15.0, 500.0),
        "c1": ("churned", "C0", 300.0, 10.0), "c2": ("churned", "C0", 310.0, 12.0),
        "c3": ("churned", "C1", 500.0, 10.0), "c4": ("churned", "C1", 490.0, 12.0),
        "c5": ("churned", "C2", 305.0, 30.0), "c6": ("churned", "C2", 315.0, 28.0),
    }  # fmt: skip
    shown = {"recency_days", "monetary_365d"}
    features = spark.createDataFrame(
        [(c, r, m) for c, (_, _, r, m) in values.items()],
        "customer_id STRING, recency_days DOUBLE, monetary_365d DOUBLE",
    ).select("customer_id", *[(F.col(f) if f in shown else F.lit(None).cast("double")).alias(f) for f in catalog.names])
    assigned = spark.createDataFrame(
        [(c, macro, f"value-{macro}-{s}") for c, (macro, s, _, _) in values.items()],
        "customer_id STRING, macro_segment STRING, segment_id STRING",
    ).select("customer_id", F.lit("value").alias("layer"), "macro_segment", "segment_id")
    rows = {r["segment_id"]: r for r in build_profiles(assigned, features, catalog, cfg, D1).collect()}
    churned = {s: rows[s]["label"] for s in ("value-churned-C0", "value-churned-C1", "value-churned-C2")}
    # Worked out by hand: churned recency mean 370, sd sqrt(47050 / 6) = 88.55; spend mean 17, sd sqrt(73) = 8.54.
    # C0 recency z -0.73 (spend -0.70); C1 recency +1.41 (spend -0.70); C2 spend +1.40 (recency -0.68).
    assert churned == {
        "value-churned-C0": "more recent than other churned customers",
        "value-churned-C1": "less recent than other churned customers",
        "value-churned-C2": "spends more than other churned customers",
    }
    assert rows["value-churned-C1"]["z_in_macro_recency_days"] == pytest.approx(125 / math.sqrt(47050 / 6), abs=1e-3)
    assert rows["value-churned-C0"]["z_recency_days"] > 0  # lapsed against the whole population
    assert rows["value-active-A"]["label"] == "typical of the active customers"  # alone in its macro segment


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
    assert (rows["A"]["label"], rows["B"]["label"]) == (
        "spends more than other active customers",
        "spends less than other active customers",
    )
    assert (rows["A"]["size"], rows["A"]["share"], rows["C"]["size"]) == (2, 0.4, 1)
    assert rows["C"]["label"] is None and rows["C"]["mean_monetary_365d"] is None  # below k-anonymity


def test_a_mean_on_half_of_the_last_decimal_rounds_the_same_whatever_the_summation_order():
    # 200 amounts in cents: their mean is a multiple of 0.00005, here exactly half of the 4th decimal, and
    # the two summation orders (as two orders of partition merges in Spark) differ in the last bits.
    rng = random.Random(0)
    amounts = [round(rng.uniform(10, 500), 2) for _ in range(200)]
    forward, backward = sum(amounts) / 200, sum(reversed(amounts)) / 200
    assert round(forward, 4) != round(backward, 4)  # what a plain round published on two reruns
    exact = Fraction(sum(Fraction(str(a)) for a in amounts), 200)
    assert exact * 10000 % 1 == Fraction(1, 2)
    assert _round(forward) == _round(backward) == pytest.approx(float(exact), abs=1e-4)


def assignments(spark, rows):
    return spark.createDataFrame(rows, "customer_id STRING, layer STRING, segment_id STRING, macro_segment STRING")


def history_rows(spark, cfg):
    rows = tables.read(spark, cfg, "gold.segment_history").collect()
    return sorted(
        (r["customer_id"], r["segment_id"], str(r["valid_from"]), str(r["valid_to"]), r["is_current"]) for r in rows
    )


def test_history_is_a_type_2_dimension_and_reruns_change_nothing(spark, make_config):
    cfg = make_config("train.layers.engagement=null")
    first = update_history(spark, cfg, assignments(spark, [("a", "value", "s1", "active"),
                                                           ("b", "value", "s2", "active"),
                                                           ("d", "value", "s1", "active")]), D1)  # fmt: skip
    assert first == {"opened": 3, "closed": 0, "reopened": 0, "removed": 0}
    assert history_rows(spark, cfg) == [("a", "s1", str(D1), "None", True), ("b", "s2", str(D1), "None", True),
                                        ("d", "s1", str(D1), "None", True)]  # fmt: skip
    day2 = assignments(
        spark, [("a", "value", "s1", "active"), ("b", "value", "s3", "active"), ("c", "value", "s1", "new")]
    )
    counts = update_history(spark, cfg, day2, D2)
    # b moved, c entered; b's and d's (left) rows closed
    assert counts == {"opened": 2, "closed": 2, "reopened": 0, "removed": 0}
    expected = [
        ("a", "s1", str(D1), "None", True),
        ("b", "s2", str(D1), str(D2), False),
        ("b", "s3", str(D2), "None", True),
        ("c", "s1", str(D2), "None", True),
        ("d", "s1", str(D1), str(D2), False),
    ]
    assert history_rows(spark, cfg) == expected
    before = version(spark, cfg)
    # The same snapshot again: nothing to change, so Delta commits nothing.
    assert update_history(spark, cfg, day2, D2) == {"opened": 0, "closed": 0, "reopened": 0, "removed": 0}
    assert history_rows(spark, cfg) == expected
    assert version(spark, cfg) == before
    with pytest.raises(MicrosegError, match="date order"):
        update_history(spark, cfg, day2, D1)
    before = [r for r in history_rows(spark, cfg) if r[0] == "a"]
    update_history(spark, cfg, assignments(spark, [("a", "value", "s1", "at_risk")]), D3)  # same segment: no new row
    assert [r for r in history_rows(spark, cfg) if r[0] == "a"] == before
    # D3 only closed rows (b and c left): a snapshot before it is refused although no row opened at D3.
    with pytest.raises(MicrosegError, match="date order"):
        update_history(spark, cfg, day2, D2)


HISTORY = "gold.segment_history"


def version(spark, cfg):
    return tables.version(spark, cfg, HISTORY)


def full_rows(spark, cfg):
    """Every column of every history row, sorted."""
    return sorted(
        (r["customer_id"], r["layer"], r["segment_id"], r["macro_segment"], str(r["valid_from"]), str(r["valid_to"]),
         r["is_current"])
        for r in tables.read(spark, cfg, HISTORY).collect()
    )  # fmt: skip


def commits_since(spark, cfg, before):
    """The operations Delta committed to the history after version ``before``, oldest first."""
    rows = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_path(cfg, HISTORY)}`").collect()
    return [r["operation"] for r in sorted(rows, key=lambda r: r["version"]) if r["version"] > before]


# D1: a and d stay, b and e move, c enters, f is not there yet.
DAY1 = [("a", "value", "s1", "active"), ("a", "engagement", "s9", "active"), ("b", "value", "s2", "active"),
        ("d", "value", "s1", "active"), ("e", "value", "s1", "active")]  # fmt: skip
# D2, first assignments: b moves to s3, c enters, d leaves, e moves to s2.
DAY2_FIRST = [("a", "value", "s1", "active"), ("a", "engagement", "s9", "active"), ("b", "value", "s3", "active"),
              ("c", "value", "s1", "new"), ("e", "value", "s2", "active")]  # fmt: skip
# D2, assigned again with other results: a moves, b stays after all, c enters in another segment, d is back
# (it stays), e moves to s2 as before but in another macro segment, f enters.
DAY2_SECOND = [("a", "value", "s2", "active"), ("a", "engagement", "s9", "active"), ("b", "value", "s2", "active"),
               ("c", "value", "s4", "new"), ("d", "value", "s1", "active"), ("e", "value", "s2", "new"),
               ("f", "value", "s1", "new")]  # fmt: skip
D1S, D2S = str(D1), str(D2)
# The history of DAY1 then DAY2_FIRST, worked out by hand.
AFTER_FIRST = sorted([
    ("a", "engagement", "s9", "active", D1S, "None", True),
    ("a", "value", "s1", "active", D1S, "None", True),
    ("b", "value", "s2", "active", D1S, D2S, False),
    ("b", "value", "s3", "active", D2S, "None", True),
    ("c", "value", "s1", "new", D2S, "None", True),
    ("d", "value", "s1", "active", D1S, D2S, False),
    ("e", "value", "s1", "active", D1S, D2S, False),
    ("e", "value", "s2", "active", D2S, "None", True),
])  # fmt: skip
# The history of DAY1 then DAY2_SECOND, worked out by hand.
AFTER_SECOND = sorted([
    ("a", "engagement", "s9", "active", D1S, "None", True),
    ("a", "value", "s1", "active", D1S, D2S, False),
    ("a", "value", "s2", "active", D2S, "None", True),
    ("b", "value", "s2", "active", D1S, "None", True),
    ("c", "value", "s4", "new", D2S, "None", True),
    ("d", "value", "s1", "active", D1S, "None", True),
    ("e", "value", "s1", "active", D1S, D2S, False),
    ("e", "value", "s2", "new", D2S, "None", True),
    ("f", "value", "s1", "new", D2S, "None", True),
])  # fmt: skip


def test_rerunning_the_latest_snapshot_with_other_assignments_is_one_merge(spark, make_config):
    cfg = make_config()
    update_history(spark, cfg, assignments(spark, DAY1), D1)
    update_history(spark, cfg, assignments(spark, DAY2_FIRST), D2)
    assert full_rows(spark, cfg) == AFTER_FIRST
    before = version(spark, cfg)
    counts = update_history(spark, cfg, assignments(spark, DAY2_SECOND), D2)
    assert full_rows(spark, cfg) == AFTER_SECOND
    # One commit undid DAY2_FIRST and applied DAY2_SECOND: no state in between was ever visible.
    assert commits_since(spark, cfg, before) == ["MERGE"]
    # Opened: a s2, c s4, e s2 (new macro), f s1; closed: a s1; reopened: b s2, d s1; removed: b s3, c s1, e s2.
    assert counts == {"opened": 4, "closed": 1, "reopened": 2, "removed": 3}


def test_an_interrupted_application_changes_nothing_and_a_rerun_repairs_the_old_crash_state(
    spark, make_config, monkeypatch
):
    """A failure inside the one MERGE commits nothing. The version before it deleted the rows it had opened,
    reopened the rows it had closed, then merged, in three commits; a crash after the first left rows closed
    at D2 with nothing open after them: the next application takes them as reopened and puts the history
    right in one commit."""
    from microseg.outputs import assign

    cfg = make_config()
    update_history(spark, cfg, assignments(spark, DAY1), D1)
    update_history(spark, cfg, assignments(spark, DAY2_FIRST), D2)
    before = version(spark, cfg)
    real_merge = assign.tables.merge_type2

    def failing(source, *args, **kwargs):  # the MERGE's job fails on one of its rows, as a lost executor would
        poisoned = source.withColumn(
            "segment_id", F.when(F.col("customer_id") == "f", F.raise_error(F.lit("killed"))).otherwise("segment_id")
        )
        return real_merge(poisoned, *args, **kwargs)

    monkeypatch.setattr(assign.tables, "merge_type2", failing)
    with pytest.raises(Exception, match="killed"):
        update_history(spark, cfg, assignments(spark, DAY2_SECOND), D2)
    assert (version(spark, cfg), full_rows(spark, cfg)) == (before, AFTER_FIRST)
    monkeypatch.undo()

    tables.delete(spark, cfg, HISTORY, f"valid_from = DATE'{D2S}'")  # the old rerun's first commit, then a crash
    before = version(spark, cfg)
    update_history(spark, cfg, assignments(spark, DAY2_FIRST), D2)
    assert full_rows(spark, cfg) == AFTER_FIRST
    assert commits_since(spark, cfg, before) == ["MERGE"]
