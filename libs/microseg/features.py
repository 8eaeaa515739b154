"""Features stage: one row per customer as of a snapshot date, from events at or before it."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg import tables
from microseg.config import Config
from microseg.runlog import Entry, RunContext, StageReport

FEATURE_COLUMNS = [
    "recency_days",
    "frequency_30d",
    "frequency_90d",
    "frequency_365d",
    "monetary_365d",
    "avg_order_value",
    "tenure_days",
    "web_sessions_90d",
    "email_open_rate",
]


def _before_cutoff(column: str, as_of: dt.date) -> Column:
    """True for events at or before the end of the as_of day (UTC)."""
    return F.col(column) < F.lit(as_of + dt.timedelta(days=1)).cast("timestamp")


def _within_days(column: str, as_of: dt.date, days: int) -> Column:
    start = F.lit(as_of - dt.timedelta(days=days - 1)).cast("timestamp")
    return (F.col(column) >= start) & _before_cutoff(column, as_of)


def order_features(orders: DataFrame, as_of: dt.date) -> DataFrame:
    """Recency, frequency, monetary value and average order value per customer, in one pass."""
    past = orders.where(_before_cutoff("order_ts", as_of) & ~F.coalesce(F.col("is_return"), F.lit(False)))
    return past.groupBy("customer_id").agg(
        F.datediff(F.lit(as_of), F.to_date(F.max("order_ts"))).alias("recency_days"),
        F.count_if(_within_days("order_ts", as_of, 30)).alias("frequency_30d"),
        F.count_if(_within_days("order_ts", as_of, 90)).alias("frequency_90d"),
        F.count_if(_within_days("order_ts", as_of, 365)).alias("frequency_365d"),
        F.round(F.sum(F.when(_within_days("order_ts", as_of, 365), F.col("amount_base")).otherwise(0.0)), 2).alias(
            "monetary_365d"
        ),
        F.round(F.avg("amount_base"), 2).alias("avg_order_value"),
    )


def web_features(web_events: DataFrame, as_of: dt.date) -> DataFrame:
    recent = web_events.where(F.col("customer_id").isNotNull() & _within_days("event_ts", as_of, 90))
    return recent.groupBy("customer_id").agg(F.countDistinct("session_id").alias("web_sessions_90d"))


def email_features(email_events: DataFrame, as_of: dt.date) -> DataFrame:
    """Open rate over the last 365 days: opened sends / sends (null for a customer never emailed)."""
    recent = email_events.where(_within_days("event_ts", as_of, 365))
    return recent.groupBy("customer_id").agg(
        F.try_divide(F.count_if(F.col("event_type") == "open"), F.count_if(F.col("event_type") == "sent")).alias(
            "email_open_rate"
        )
    )


def eligible_customers(customers: DataFrame, as_of: dt.date) -> DataFrame:
    """Customers known at as_of who allow profiling."""
    return customers.where(
        (F.col("signup_date") <= F.lit(as_of)) & F.coalesce(F.col("consent_profiling"), F.lit(False))
    ).select("customer_id", "signup_date")


def build_features(
    customers: DataFrame,
    orders: DataFrame,
    web_events: DataFrame | None,
    email_events: DataFrame | None,
    as_of: dt.date,
    version: str,
) -> DataFrame:
    """gold.customer_features rows for one as_of: one per eligible customer.

    Sales only (returns excluded). A customer who never ordered has null order features and 0
    orders in each window; a source the data set lacks (None) gives null features, not zeros.
    """
    base = eligible_customers(customers, as_of)
    joined = base.join(order_features(orders, as_of), on="customer_id", how="left")
    if web_events is not None:
        joined = joined.join(web_features(web_events, as_of), on="customer_id", how="left").withColumn(
            "web_sessions_90d", F.coalesce(F.col("web_sessions_90d"), F.lit(0))
        )
    else:
        joined = joined.withColumn("web_sessions_90d", F.lit(None))
    if email_events is not None:
        joined = joined.join(email_features(email_events, as_of), on="customer_id", how="left")
    else:
        joined = joined.withColumn("email_open_rate", F.lit(None).cast("double"))
    return joined.select(
        "customer_id",
        F.lit(as_of).alias("as_of"),
        "recency_days",
        *[
            F.coalesce(F.col(c), F.lit(0)).cast("int").alias(c)
            for c in ("frequency_30d", "frequency_90d", "frequency_365d")
        ],
        F.coalesce(F.col("monetary_365d"), F.lit(0.0)).alias("monetary_365d"),
        "avg_order_value",
        F.datediff(F.lit(as_of), F.col("signup_date")).alias("tenure_days"),
        F.col("web_sessions_90d").cast("int").alias("web_sessions_90d"),
        "email_open_rate",
        F.lit(version).alias("feature_version"),
    )


def run_features(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Write gold.customer_features for run.as_of, replacing that snapshot only."""

    def silver(name: str) -> DataFrame | None:
        return tables.read(spark, cfg, f"silver.{name}") if tables.exists(spark, cfg, f"silver.{name}") else None

    customers = tables.read(spark, cfg, "silver.customers")
    web, email = silver("web_events"), silver("email_events")
    features = build_features(
        customers, tables.read(spark, cfg, "silver.orders"), web, email, run.as_of, cfg.features.version
    )
    tables.replace_where(features, cfg, "gold.customer_features", f"as_of = '{run.as_of}'", partition_by="as_of")
    written = tables.read(spark, cfg, "gold.customer_features").where(F.col("as_of") == F.lit(run.as_of)).count()
    known = customers.where(F.col("signup_date") <= F.lit(run.as_of))
    refused = known.where(~F.coalesce(F.col("consent_profiling"), F.lit(False))).count()
    report = StageReport("features")
    report.entries.append(
        Entry(
            "gold.customer_features",
            rows_in=written + refused,
            rows_written=written,
            rows_quarantined=0,
            details={
                "excluded_no_profiling_consent": refused,
                "sources_missing": [n for n, df in (("web_events", web), ("email_events", email)) if df is None],
            },
        )
    )
    return report
