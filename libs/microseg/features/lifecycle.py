"""Lifecycle macro segments: the rules that place a customer in one stage as of a snapshot.

The thresholds come from ``features.lifecycle`` in conf; the rules are evaluated in order and the
first that applies wins (see conf/base.yaml). They read the columns the features stage computes:
recency_days, days_since_first_purchase, days_since_activity and _days_since_reactivation.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg.runtime.config import LifecycleConfig

STAGES = ("prospect", "dormant", "new", "active", "at_risk", "churned", "reactivated")


def lifecycle_stage(rules: LifecycleConfig) -> Column:
    """The macro segment from the computed features; the rules are documented in conf/base.yaml."""
    recency, first = F.col("recency_days"), F.col("days_since_first_purchase")
    return (
        F.when(recency.isNull() & (F.col("days_since_activity") <= rules.engaged_days), "prospect")
        .when(recency.isNull(), "dormant")
        .when(recency > rules.churned_days, "churned")
        .when(recency > rules.at_risk_days, "at_risk")
        .when(first <= rules.new_days, "new")
        .when(F.col("_days_since_reactivation") <= rules.reactivated_days, "reactivated")
        .otherwise("active")
    )


ENTERED = "(entered)"  # not in the earlier snapshot


LEFT = "(left)"  # not in the later snapshot


def transition_counts(
    before: DataFrame, after: DataFrame, column: str, key: str = "customer_id", by: tuple[str, ...] = ()
) -> DataFrame:
    """The transition matrix of ``column`` between two snapshots, one row per (by..., from, to).

    Columns: ``by``..., from_segment, to_segment, customers, share (of the from_segment row total).
    Customers only in ``after`` come from ENTERED; those only in ``before`` go to LEFT.
    """
    earlier = before.select(key, *by, F.col(column).cast("string").alias("from_segment"))
    later = after.select(key, *by, F.col(column).cast("string").alias("to_segment"))
    moves = (
        earlier.join(later, [key, *by], "full_outer")
        .groupBy(
            *by,
            F.coalesce("from_segment", F.lit(ENTERED)).alias("from_segment"),
            F.coalesce("to_segment", F.lit(LEFT)).alias("to_segment"),
        )
        .agg(F.count("*").alias("customers"))
    )
    row_total = F.sum("customers").over(Window.partitionBy(*by, "from_segment"))
    return moves.withColumn("share", F.round(F.col("customers") / row_total, 4)).orderBy(
        *by, "from_segment", "to_segment"
    )
