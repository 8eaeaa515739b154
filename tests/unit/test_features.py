"""Feature values on tiny hand-built data, each worked out by hand in the comments."""

import datetime as dt
import math
import statistics

import pytest
from pyspark.sql import functions as F

from microseg.features.catalog import Catalog, load_catalog, markdown
from microseg.features.lifecycle import lifecycle_stage
from microseg.features.stage import Inputs, build_features
from microseg.runtime.config import LifecycleConfig

AS_OF = dt.date(2025, 6, 30)
D = dt.date


def ts(day, hour=12, minute=0):
    return dt.datetime.combine(day, dt.time(hour, minute))


@pytest.fixture(scope="module")
def cfg(make_config):
    return make_config()


@pytest.fixture(scope="module")
def catalog(cfg):
    return load_catalog(cfg)


def customers_df(spark, rows):
    return spark.createDataFrame(rows, "customer_id STRING, signup_date DATE, consent_profiling BOOLEAN")


ORDER_SCHEMA = (
    "customer_id STRING, order_id STRING, order_ts TIMESTAMP, amount_base DOUBLE, discount_base DOUBLE, "
    "is_return BOOLEAN, channel STRING, offer_code STRING"
)


def comparable(features):
    """Set operations cannot take map columns: compare null_reasons as JSON."""
    return features.withColumn("null_reasons", F.to_json("null_reasons"))


def orders_df(spark, rows):
    return spark.createDataFrame(rows, ORDER_SCHEMA)


@pytest.fixture(scope="module")
def inputs(spark):
    customers = customers_df(
        spark,
        [
            ("a", D(2025, 1, 1), True),
            ("b", D(2025, 6, 1), True),
            ("c", D(2025, 1, 1), False),  # no profiling consent: excluded
            ("d", D(2025, 7, 1), True),  # signs up after as_of: excluded
            ("e", D(2024, 1, 1), True),  # only a support ticket
            ("f", D(2024, 1, 1), True),  # back after a 181-day gap: reactivated
            ("g", D(2024, 1, 1), True),  # a 180-day gap is not a churned spell: active
        ],
    )
    orders = orders_df(
        spark,
        [
            ("a", "o1", ts(D(2024, 6, 1)), 30.0, 0.0, False, "web", None),  # older than 365 days
            ("a", "o2", ts(D(2025, 3, 1)), 50.0, 10.0, False, "app", "OFF1"),  # 365d, previous 90d window
            ("a", "o3", ts(D(2025, 5, 1)), 50.0, 0.0, False, "web", None),  # 90d
            ("a", "o4", ts(D(2025, 6, 30), 23), 100.0, 0.0, False, "store", None),  # on as_of, late: counts
            ("a", "r1", ts(D(2025, 6, 2)), 50.0, 0.0, True, "web", None),  # a return: not a sale
            ("a", "o5", ts(D(2025, 7, 1), 0), 999.0, 0.0, False, "web", None),  # after as_of: ignored
            ("c", "o6", ts(D(2025, 6, 1)), 10.0, 0.0, False, "web", None),
            ("f", "o7", ts(D(2024, 11, 1)), 20.0, 0.0, False, "web", None),
            ("f", "o8", ts(D(2025, 5, 1)), 20.0, 0.0, False, "web", None),
            ("g", "o9", ts(D(2024, 11, 2)), 20.0, 0.0, False, "web", None),
            ("g", "o10", ts(D(2025, 5, 1)), 20.0, 0.0, False, "web", None),
        ],
    )
    items = spark.createDataFrame(
        [
            ("a", "o1", "fashion", 30.0),  # older than 365 days
            ("a", "o2", "fashion", 30.0),
            ("a", "o2", "home", 20.0),
            ("a", "o3", "fashion", 50.0),
            ("a", "o4", "books", 100.0),
            ("a", "o4", None, 5.0),  # no category: left out
            ("a", "o5", "toys", 999.0),  # after as_of
        ],
        "customer_id STRING, order_id STRING, category STRING, line_amount_base DOUBLE",
    )
    web = spark.createDataFrame(
        [
            ("a", "s1", ts(D(2025, 6, 1), 10, 0), "page_view"),
            ("a", "s1", ts(D(2025, 6, 1), 10, 2), "add_to_cart"),  # converted: purchase in the session
            ("a", "s1", ts(D(2025, 6, 1), 10, 4), "purchase"),
            ("a", "s2", ts(D(2025, 6, 29), 23, 30), "page_view"),
            ("a", "s2", ts(D(2025, 6, 29), 23, 31), "add_to_cart"),  # converted: o4 23.5 hours later
            ("a", "s3", ts(D(2025, 4, 10), 8), "page_view"),
            ("a", "s3", ts(D(2025, 4, 10), 8, 1), "add_to_cart"),  # abandoned: next order weeks later
            ("a", "s4", ts(D(2025, 3, 1)), "product_view"),  # older than 90 days
            ("a", "s5", ts(D(2025, 6, 30), 23, 58), "search"),
            ("a", "s5", ts(D(2025, 6, 30), 23, 59), "add_to_cart"),  # abandoned: o5 is after as_of
            ("a", "s6", ts(D(2025, 7, 2)), "page_view"),  # after as_of
            ("b", "s7", ts(D(2025, 6, 10)), "page_view"),
            (None, "s8", ts(D(2025, 6, 10)), "page_view"),  # anonymous
        ],
        "customer_id STRING, session_id STRING, event_ts TIMESTAMP, event_type STRING",
    )
    email = spark.createDataFrame(
        [
            ("a", "e1", "c1", "sent", ts(D(2025, 6, 1))),
            ("a", "e2", "c1", "open", ts(D(2025, 6, 1))),
            ("a", "e3", "c1", "open", ts(D(2025, 6, 2))),  # a second open of c1 counts once
            ("a", "e4", "c1", "click", ts(D(2025, 6, 1))),
            ("a", "e5", "c2", "sent", ts(D(2025, 5, 1))),
            ("a", "e6", "c2", "unsubscribe", ts(D(2025, 5, 2))),
            ("a", "e7", "c3", "sent", ts(D(2024, 1, 1))),  # older than 365 days
            ("a", "e8", "c4", "open", ts(D(2025, 7, 2))),  # after as_of
        ],
        "customer_id STRING, event_id STRING, campaign_id STRING, event_type STRING, event_ts TIMESTAMP",
    )
    tickets = spark.createDataFrame(
        [
            ("a", ts(D(2025, 6, 10)), 4),
            ("a", ts(D(2025, 1, 10)), 2),
            ("a", ts(D(2024, 1, 1)), 5),  # older than 365 days
            ("a", ts(D(2025, 7, 5)), 1),  # after as_of
            ("e", ts(D(2025, 2, 1)), None),
        ],
        "customer_id STRING, created_at TIMESTAMP, satisfaction INT",
    )
    surveys = spark.createDataFrame(
        [("a", ts(D(2025, 1, 1)), 9), ("a", ts(D(2025, 6, 1)), 6), ("a", ts(D(2025, 7, 1)), 0)],
        "customer_id STRING, submitted_at TIMESTAMP, nps INT",
    )
    return Inputs(customers, orders, items, web, email, tickets, surveys)


@pytest.fixture(scope="module")
def rows(inputs, catalog, cfg):
    df = build_features(inputs, AS_OF, catalog, cfg.features)
    return {r["customer_id"]: r.asDict() for r in df.collect()}


def test_only_eligible_customers(rows):
    assert set(rows) == {"a", "b", "e", "f", "g"}


def test_recency_frequency_monetary(rows):
    a = rows["a"]
    assert a["recency_days"] == 0
    assert (a["frequency_30d"], a["frequency_90d"], a["frequency_365d"]) == (1, 2, 3)  # o4 | o3 o4 | o2 o3 o4
    assert (a["monetary_30d"], a["monetary_90d"], a["monetary_365d"]) == (100.0, 150.0, 200.0)
    assert a["avg_order_value"] == 57.5  # (30 + 50 + 50 + 100) / 4, every sale to as_of
    assert a["tenure_days"] == 180 and a["days_since_first_purchase"] == 394  # 2024-06-01 -> 2025-06-30


def test_interpurchase_and_trend(rows):
    a = rows["a"]
    gaps = [273, 61, 60]  # 2024-06-01 -> 2025-03-01 -> 2025-05-01 -> 2025-06-30
    assert a["interpurchase_days_mean"] == pytest.approx(sum(gaps) / 3, abs=1e-3)
    assert a["interpurchase_days_std"] == pytest.approx(statistics.stdev(gaps), abs=1e-3)
    assert a["spend_trend_90d"] == 0.5  # last 90 days 150, the 90 before 50: (150 - 50) / 200
    assert rows["f"]["interpurchase_days_std"] is None  # one gap: no spread


def test_discount_returns_offers_channels(rows):
    a = rows["a"]
    assert a["discount_share"] == round(10 / 210, 4)  # discount 10 on gross (60 + 50 + 100)
    assert a["return_rate"] == round(1 / 3, 4)  # r1 against o2 o3 o4
    assert a["offer_redemption_rate"] == round(1 / 3, 4)  # o2 only
    assert (a["channel_share_web"], a["channel_share_app"], a["channel_share_store"]) == (0.3333, 0.3333, 0.3333)


def test_category_affinity_and_entropy(rows):
    a = rows["a"]
    # 365 days: fashion 30 + 50, home 20, books 100 of 200.
    assert (a["category_share_fashion"], a["category_share_home"], a["category_share_books"]) == (0.4, 0.1, 0.5)
    assert a["category_share_toys"] == 0.0
    expected = -sum(p * math.log2(p) for p in (0.4, 0.1, 0.5))
    assert a["category_entropy"] == pytest.approx(expected, abs=1e-4)
    assert rows["f"]["category_entropy"] is None
    assert rows["f"]["null_reasons"]["category_entropy"] == "no categorised items in 365 days"


def test_web_and_cart_abandonment(rows):
    a, b = rows["a"], rows["b"]
    assert a["web_sessions_90d"] == 4  # s1 s2 s3 s5
    assert a["pages_per_session_90d"] == 0.75  # 3 page views over 4 sessions
    assert (a["product_views_90d"], a["searches_90d"], a["cart_adds_90d"]) == (0, 1, 4)
    assert (a["wishlist_adds_90d"], a["checkout_starts_90d"]) == (0, 0)
    assert a["cart_abandonment_rate"] == 0.5  # s3 and s5 of four adds
    assert (b["web_sessions_90d"], b["pages_per_session_90d"]) == (1, 1.0)
    assert (
        b["cart_abandonment_rate"] is None and b["null_reasons"]["cart_abandonment_rate"] == "no add-to-cart in 90 days"
    )
    assert rows["e"]["web_sessions_90d"] == 0  # the source exists and e had no session: a real zero


def test_email_support_survey(rows):
    a, b = rows["a"], rows["b"]
    assert (a["email_open_rate"], a["email_click_rate"], a["email_unsubscribe_rate"]) == (0.5, 0.5, 0.5)
    assert b["email_open_rate"] is None and b["null_reasons"]["email_open_rate"] == "no email sent in 365 days"
    assert (a["support_tickets_365d"], a["support_satisfaction_mean"]) == (2, 3.0)
    assert a["nps_latest"] == 6
    assert rows["e"]["support_tickets_365d"] == 1 and rows["e"]["support_satisfaction_mean"] is None


def test_days_since_activity(rows):
    assert rows["a"]["days_since_activity"] == 0  # o4 on as_of
    assert rows["b"]["days_since_activity"] == 20  # web event on 2025-06-10
    assert rows["e"]["days_since_activity"] == 149  # ticket on 2025-02-01


def test_lifecycle_from_features(rows):
    assert rows["a"]["macro_segment"] == "active"  # its 273-day gap ended 121 days ago, more than 90
    assert rows["b"]["macro_segment"] == "prospect"  # never bought, active 20 days ago
    assert rows["e"]["macro_segment"] == "dormant"  # never bought, last seen 149 days ago
    assert rows["f"]["macro_segment"] == "reactivated"  # 181-day gap ended 60 days ago
    assert rows["g"]["macro_segment"] == "active"  # a 180-day gap is not more than churned_days


def test_missing_sources_give_null_with_reason(spark, inputs, catalog, cfg):
    bare = Inputs(inputs.customers, inputs.orders.drop("offer_code").withColumn("discount_base", F.lit(None)))
    row = build_features(bare, AS_OF, catalog, cfg.features).where("customer_id = 'a'").first()
    assert row["web_sessions_90d"] is None and row["email_open_rate"] is None and row["nps_latest"] is None
    assert row["null_reasons"]["web_sessions_90d"] == "the data set has no web_events source"
    assert row["null_reasons"]["offer_redemption_rate"] == "orders has no offer_code values"
    assert row["null_reasons"]["discount_share"] == "orders has no discount_base values"
    assert row["recency_days"] == 0 and row["frequency_365d"] == 3
    assert "recency_days" not in row["null_reasons"]


def test_events_after_as_of_change_nothing(spark, inputs, catalog, cfg):
    """Leakage: add a burst of later events to every source; the snapshot must not move."""
    later = ts(D(2025, 7, 1), 0, 0)  # the first instant after the as_of day
    extra = Inputs(
        inputs.customers,
        inputs.orders.unionByName(
            orders_df(
                spark, [(c, f"x{c}", later, 500.0, 50.0, r, "app", "LATE") for c in "abefg" for r in (False, True)]
            )
        ),
        inputs.order_items.unionByName(spark.createDataFrame([("a", "xa", "toys", 500.0)], inputs.order_items.schema)),
        inputs.web_events.unionByName(
            spark.createDataFrame(
                [(c, f"z{c}", later, t) for c in "abefg" for t in ("page_view", "add_to_cart", "purchase")],
                inputs.web_events.schema,
            )
        ),
        inputs.email_events.unionByName(
            spark.createDataFrame(
                [(c, f"m{c}{t}", "c9", t, later) for c in "abefg" for t in ("sent", "open", "click")],
                inputs.email_events.schema,
            )
        ),
        inputs.support_tickets.unionByName(
            spark.createDataFrame([(c, later, 1) for c in "abefg"], inputs.support_tickets.schema)
        ),
        inputs.survey_responses.unionByName(
            spark.createDataFrame([(c, later, 0) for c in "abefg"], inputs.survey_responses.schema)
        ),
    )
    before = comparable(build_features(inputs, AS_OF, catalog, cfg.features))
    after = comparable(build_features(extra, AS_OF, catalog, cfg.features))
    assert before.count() == after.count() == 5
    assert after.exceptAll(before).count() == 0 and before.exceptAll(after).count() == 0


RULES = LifecycleConfig()  # engaged 90, new 90, at_risk 90, churned 180, reactivated 90


@pytest.mark.parametrize(
    ("recency", "first", "reactivation", "activity", "expected"),
    [
        (None, None, None, 89, "prospect"),
        (None, None, None, 90, "prospect"),
        (None, None, None, 91, "dormant"),
        (None, None, None, None, "dormant"),
        (179, 400, None, 179, "at_risk"),
        (180, 400, None, 180, "at_risk"),
        (181, 400, None, 181, "churned"),
        (89, 400, None, 89, "active"),
        (90, 400, None, 90, "active"),
        (91, 400, None, 91, "at_risk"),
        (10, 89, None, 10, "new"),
        (10, 90, None, 10, "new"),
        (10, 91, None, 10, "active"),
        (10, 400, 89, 10, "reactivated"),
        (10, 400, 90, 10, "reactivated"),
        (10, 400, 91, 10, "active"),
        (100, 400, 100, 100, "at_risk"),  # reactivated once, but lapsing again
    ],
)
def test_lifecycle_rule_boundaries(spark, recency, first, reactivation, activity, expected):
    df = spark.createDataFrame(
        [(recency, first, reactivation, activity)],
        "recency_days INT, days_since_first_purchase INT, _days_since_reactivation INT, days_since_activity INT",
    )
    assert df.select(lifecycle_stage(RULES).alias("s")).first()["s"] == expected


def test_catalog_documents_every_feature_column(rows, catalog):
    columns = set(rows["a"]) - {"customer_id", "as_of", "macro_segment", "null_reasons", "feature_version"}
    assert columns == set(catalog.names)
    assert all(f.description and f.high and f.low and f.unit for f in catalog.features)
    assert rows["a"]["feature_version"] == catalog.version


def test_catalog_expands_categories_and_rejects_duplicates():
    entry = {"layer": "preference", "transform": "none", "unit": "share", "description": "d"}
    catalog = Catalog.model_validate(
        {
            "version": "t",
            "top_categories": ["x", "y"],
            "channels": [],
            "features": [{"name": "category_share_{category}", "high": "{category} lover", "low": "l", **entry}],
            "comparatives": {"category_share_{category}": ["buys more {category}", "buys less {category}"]},
        }
    )
    assert catalog.names == ["category_share_x", "category_share_y"]
    assert catalog.feature("category_share_y").high == "y lover"
    assert catalog.comparative("category_share_y", above=False) == "buys less y"
    assert catalog.comparative("category_share_x", above=True) == "buys more x"
    with pytest.raises(ValueError, match="not in the catalog"):
        Catalog.model_validate(
            {
                "version": "t",
                "top_categories": [],
                "channels": [],
                "features": [{"name": "a", "high": "h", "low": "l", **entry}],
                "comparatives": {"b": ["more b", "less b"]},
            }
        )
    with pytest.raises(ValueError, match="more than once"):
        Catalog.model_validate(
            {
                "version": "t",
                "top_categories": [],
                "channels": [],
                "features": [{"name": "a", "high": "h", "low": "l", **entry}] * 2,
            }
        )


def test_generated_catalog_page_is_current(catalog):
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "FEATURES.md"
    assert page.read_text() == markdown(catalog) + "\n", "run `microseg catalog` to regenerate docs/FEATURES.md"


def test_run_counts_segments_and_consent_in_the_write_pass(spark, inputs, make_config):
    """The stage's counts (observed while writing) against the fixture's customers, worked out above."""
    from dataclasses import fields

    from microseg.features.stage import run_features
    from microseg.runtime import tables
    from microseg.runtime.runlog import RunContext

    cfg = make_config()
    for f in fields(Inputs):
        tables.overwrite(getattr(inputs, f.name), cfg, f"silver.{f.name}")
    first = run_features(spark, cfg, RunContext(as_of=AS_OF)).entries[0]
    # a, b, e, f, g are written; c refused profiling; d signed up after as_of and is not counted at all.
    assert (first.rows_in, first.rows_written, first.details["excluded_no_profiling_consent"]) == (6, 5, 1)
    assert first.details["macro_segments"] == {"active": 2, "dormant": 1, "prospect": 1, "reactivated": 1}
    assert first.details["previous_as_of"] is None

    later = run_features(spark, cfg, RunContext(as_of=D(2025, 7, 31))).entries[0]
    assert (later.rows_written, later.details["previous_as_of"]) == (6, "2025-06-30")  # d is known now
    moves = later.details["lifecycle_transitions"]
    assert sum(moves.values()) == 6
    assert sum(n for move, n in moves.items() if move.startswith("(entered) -> ")) == 1
