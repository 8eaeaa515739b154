"""Feature values on tiny data, worked out by hand."""

import datetime as dt

from microseg.features import build_features

AS_OF = dt.date(2025, 6, 30)


def ts(day, hour=12):
    return dt.datetime.combine(day, dt.time(hour))


def test_order_web_email_features(spark):
    customers = spark.createDataFrame(
        [
            ("a", dt.date(2025, 1, 1), True),
            ("b", dt.date(2025, 6, 1), True),
            ("c", dt.date(2025, 1, 1), False),  # no profiling consent: excluded
            ("d", dt.date(2025, 7, 1), True),  # signs up after as_of: excluded
        ],
        "customer_id STRING, signup_date DATE, consent_profiling BOOLEAN",
    )
    orders = spark.createDataFrame(
        [
            ("a", ts(dt.date(2025, 6, 30), 23), 100.0, False),  # on as_of, late in the day: counts
            ("a", ts(dt.date(2025, 5, 1)), 50.0, False),
            ("a", ts(dt.date(2025, 6, 2)), -50.0, True),  # a return: not a sale
            ("a", ts(dt.date(2024, 6, 1)), 30.0, False),  # older than 365 days
            ("a", ts(dt.date(2025, 7, 1), 0), 999.0, False),  # after as_of: ignored
            ("c", ts(dt.date(2025, 6, 1)), 10.0, False),
        ],
        "customer_id STRING, order_ts TIMESTAMP, amount_base DOUBLE, is_return BOOLEAN",
    )
    web = spark.createDataFrame(
        [
            ("a", "s1", ts(dt.date(2025, 6, 1))),
            ("a", "s1", ts(dt.date(2025, 6, 1))),
            ("a", "s2", ts(dt.date(2025, 3, 1))),  # older than 90 days
            ("b", "s3", ts(dt.date(2025, 6, 10))),
            (None, "s4", ts(dt.date(2025, 6, 10))),
        ],
        "customer_id STRING, session_id STRING, event_ts TIMESTAMP",
    )
    email = spark.createDataFrame(
        [
            ("a", "sent", ts(dt.date(2025, 6, 1))),
            ("a", "sent", ts(dt.date(2025, 5, 1))),
            ("a", "open", ts(dt.date(2025, 6, 1))),
            ("a", "open", ts(dt.date(2025, 7, 2))),
        ],
        "customer_id STRING, event_type STRING, event_ts TIMESTAMP",
    )
    rows = {r["customer_id"]: r.asDict() for r in build_features(customers, orders, web, email, AS_OF, "1").collect()}
    assert set(rows) == {"a", "b"}
    a, b = rows["a"], rows["b"]
    assert a["recency_days"] == 0
    assert (a["frequency_30d"], a["frequency_90d"], a["frequency_365d"]) == (1, 2, 2)
    assert a["monetary_365d"] == 150.0
    assert a["avg_order_value"] == 60.0  # (100 + 50 + 30) / 3, lifetime to as_of
    assert a["tenure_days"] == 180
    assert a["web_sessions_90d"] == 1
    assert a["email_open_rate"] == 0.5
    assert b["recency_days"] is None and b["avg_order_value"] is None
    assert (b["frequency_365d"], b["monetary_365d"], b["web_sessions_90d"]) == (0, 0.0, 1)
    assert b["email_open_rate"] is None and b["tenure_days"] == 29
    assert a["as_of"] == AS_OF and a["feature_version"] == "1"


def test_missing_sources_give_null_not_zero(spark):
    customers = spark.createDataFrame(
        [("a", dt.date(2025, 1, 1), True)], "customer_id STRING, signup_date DATE, consent_profiling BOOLEAN"
    )
    orders = spark.createDataFrame(
        [("a", ts(dt.date(2025, 6, 1)), 10.0, False)],
        "customer_id STRING, order_ts TIMESTAMP, amount_base DOUBLE, is_return BOOLEAN",
    )
    row = build_features(customers, orders, None, None, AS_OF, "1").first()
    assert row["web_sessions_90d"] is None and row["email_open_rate"] is None
    assert row["recency_days"] == 29
