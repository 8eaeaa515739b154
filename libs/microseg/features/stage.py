"""Features stage: one row per customer as of a snapshot date, from events at or before it.

Every feature is defined in the catalog (conf/features/catalog.yaml) and computed here with
built-in Spark functions, one aggregation per source. Nothing after the end of the as_of day
(UTC) is read, so adding later events changes nothing. A feature the data cannot support (its
source or column is absent) is null for everyone, and every null feature of a customer carries its
reason in ``null_reasons``; counts are 0 only when the source exists and the customer had none.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields, replace

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from microseg.features.builders import (
    activity_column,
    category_features,
    days_since,
    eligible_customers,
    email_features,
    order_features,
    support_features,
    survey_features,
    web_features,
)
from microseg.features.catalog import Catalog, load_catalog
from microseg.features.lifecycle import STAGES as MACRO_SEGMENTS
from microseg.features.lifecycle import lifecycle_stage, transition_counts
from microseg.runtime import lake, tables
from microseg.runtime.config import Config, FeaturesConfig
from microseg.runtime.errors import ReconciliationError
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import cached, described


@dataclass(frozen=True)
class Inputs:
    """The silver tables features are built from; None where the data set has no such source."""

    customers: DataFrame
    orders: DataFrame
    order_items: DataFrame | None = None
    web_events: DataFrame | None = None
    email_events: DataFrame | None = None
    support_tickets: DataFrame | None = None
    survey_responses: DataFrame | None = None


def unsupported_features(inputs: Inputs, catalog: Catalog) -> dict[str, str]:
    """Features the data set cannot support (the catalog's ``requires``), with why: a missing source,
    or a column that is always null."""
    filled: dict[tuple[str, str], bool] = {}
    reasons = {}
    for feature in catalog.features:
        source, column = feature.source, feature.column
        if source is None:
            continue
        df = getattr(inputs, source)
        if df is None:
            reasons[feature.name] = f"the data set has no {source} source"
            continue
        if column and (source, column) not in filled:
            filled[(source, column)] = column in df.columns and not df.where(F.col(column).isNotNull()).isEmpty()
        if column and not filled[(source, column)]:
            reasons[feature.name] = f"{source} has no {column} values"
    return reasons


def build_features(
    inputs: Inputs, as_of: dt.date, catalog: Catalog, cfg: FeaturesConfig, unsupported: dict[str, str] | None = None
) -> DataFrame:
    """The feature rows of one as_of: one per eligible customer, the catalog's columns in order."""
    unsupported = unsupported_features(inputs, catalog) if unsupported is None else unsupported
    lifecycle = cfg.lifecycle
    joined = eligible_customers(inputs.customers, as_of).join(
        order_features(inputs.orders, as_of, catalog.channels, lifecycle.churned_days), "customer_id", "left"
    )
    parts = {
        "order_items": lambda df: category_features(df, inputs.orders, as_of, catalog.top_categories),
        "web_events": lambda df: web_features(df, inputs.orders, as_of, cfg),
        "email_events": lambda df: email_features(df, as_of),
        "support_tickets": lambda df: support_features(df, as_of),
        "survey_responses": lambda df: survey_features(df, as_of),
    }
    for source, build in parts.items():
        df = getattr(inputs, source)
        if df is not None:
            joined = joined.join(build(df), "customer_id", "left")
    activity = [activity_column(t) for f in catalog.features for t in f.activity_of]
    last_seen = [c for c in activity if c in joined.columns]
    joined = joined.withColumns(
        {
            "tenure_days": F.datediff(F.lit(as_of), F.col("signup_date")),
            "days_since_activity": days_since(F.greatest(*[F.col(c) for c in last_seen], F.lit(None)), as_of),
        }
    )
    counts = [f.name for f in catalog.features if f.zero_fill]
    columns = {}
    for name in catalog.names:
        if name in unsupported or name not in joined.columns:
            columns[name] = F.lit(None).cast("double")
        elif name in counts:
            columns[name] = F.coalesce(F.col(name), F.lit(0))
        else:
            columns[name] = F.col(name)
    for name in counts:  # one type per column whatever the data set supports, so snapshots can share a table
        if name in columns:
            columns[name] = columns[name].cast("double" if name.startswith("monetary") else "int")
    reasons = F.array(
        *[
            F.struct(
                F.lit(f.name).alias("key"),
                F.when(F.col(f.name).isNull(), F.lit(unsupported.get(f.name, f.null_when or "no data"))).alias("value"),
            )
            for f in catalog.features
        ]
    )
    featured = joined.withColumns(columns).withColumn("macro_segment", lifecycle_stage(lifecycle))
    return featured.select(
        "customer_id",
        F.lit(as_of).alias("as_of"),
        "macro_segment",
        *[F.col(f.name).alias(f.name, metadata={"comment": f"{f.description} ({f.unit})"}) for f in catalog.features],
        F.map_from_entries(F.filter(reasons, lambda r: r["value"].isNotNull())).alias("null_reasons"),
        F.lit(catalog.version).alias("feature_version"),
    )


def feature_schema(spark: SparkSession, cfg: Config) -> StructType:
    """The columns gold.customer_features has under the current catalog, every feature supported.

    Analysed from a plan over empty silver tables: no Spark job, no data read.
    """
    empty = {f.name: spark.createDataFrame([], lake.silver(f.name).ddl) for f in fields(Inputs)}
    return build_features(Inputs(**empty), dt.date.today(), load_catalog(cfg), cfg.features, unsupported={}).schema


def _silver_inputs(spark: SparkSession, cfg: Config) -> Inputs:
    def read(name: str) -> DataFrame | None:
        return tables.read(spark, cfg, lake.silver(name)) if tables.exists(spark, cfg, lake.silver(name)) else None

    return Inputs(**{f.name: read(f.name) for f in fields(Inputs)})


def run_features(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Write gold.customer_features for run.as_of (replacing that snapshot only) and the lifecycle transitions.

    Customers per macro segment and customers without profiling consent are counted in the pass that
    writes the snapshot (Spark Observations), and must add up to the rows the Delta commit reports.

    Raises:
        ReconciliationError: if the rows counted and the rows committed differ.
    """
    catalog = load_catalog(cfg)
    inputs = _silver_inputs(spark, cfg)
    with described(spark, "features: supported features"):
        unsupported = unsupported_features(inputs, catalog)
    consent, macro = Observation(), Observation()
    known = F.col("signup_date") <= F.lit(run.as_of)
    refusing = known & ~F.coalesce(F.col("consent_profiling"), F.lit(False))
    observed = replace(inputs, customers=inputs.customers.observe(consent, F.count_if(refusing).alias("refused")))
    features = build_features(observed, run.as_of, catalog, cfg.features, unsupported).observe(
        macro, *[F.count_if(F.col("macro_segment") == s).alias(s) for s in MACRO_SEGMENTS]
    )
    with described(spark, "features: gold.customer_features"):
        n_written = tables.replace_where(features, cfg, lake.CUSTOMER_FEATURES, f"as_of = '{run.as_of}'").rows_written
    counts = {segment: n for segment, n in macro.get.items() if n}
    refused = consent.get["refused"]
    if sum(counts.values()) != n_written:
        raise ReconciliationError(
            f"{lake.CUSTOMER_FEATURES} as_of {run.as_of}: {sum(counts.values())} customers in macro segments "
            f"{MACRO_SEGMENTS} but {n_written} rows committed; a lifecycle rule gives a segment not in that list"
        )
    previous = tables.previous_as_of(spark, cfg, lake.CUSTOMER_FEATURES, run.as_of)
    transitions = None
    if previous is not None:
        snapshot = tables.read(spark, cfg, lake.CUSTOMER_FEATURES)
        before, after = (snapshot.where(F.col("as_of") == F.lit(d)) for d in (previous, run.as_of))
        moves = transition_counts(before, after, "macro_segment").select(
            F.lit(run.as_of).alias("as_of"), F.lit(previous).alias("previous_as_of"), "*"
        )
        with described(spark, "features: gold.lifecycle_transitions"), cached(moves) as kept:
            tables.replace_where(kept, cfg, lake.LIFECYCLE_TRANSITIONS, f"as_of = '{run.as_of}'")
            transitions = {f"{r['from_segment']} -> {r['to_segment']}": r["customers"] for r in kept.collect()}
    report = StageReport("features")
    report.entries.append(
        Entry(
            lake.CUSTOMER_FEATURES.name,
            rows_in=n_written + refused,
            rows_written=n_written,
            rows_quarantined=0,
            details={
                "excluded_no_profiling_consent": refused,
                "feature_version": catalog.version,
                "macro_segments": dict(sorted(counts.items())),
                "features_unsupported": unsupported,
                "previous_as_of": previous.isoformat() if previous else None,
                "lifecycle_transitions": transitions,
            },
        )
    )
    report.info["features_unsupported"] = unsupported
    report.info["macro_segments"] = dict(sorted(counts.items()))
    return report
