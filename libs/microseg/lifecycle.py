"""Lifecycle macro segments: the rules that place a customer in one stage as of a snapshot.

The thresholds come from ``features.lifecycle`` in conf; the rules are evaluated in order and the
first that applies wins (see conf/base.yaml). They read the columns the features stage computes:
recency_days, days_since_first_purchase, days_since_activity and _days_since_reactivation.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from microseg.config import LifecycleConfig

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
