"""Features stage: one row per customer as of a snapshot date, from events at or before it.

Every feature is defined in the catalog (conf/features/catalog.yaml) and computed here with
built-in Spark functions, one aggregation per source. Nothing after the end of the as_of day
(UTC) is read, so adding later events changes nothing. A feature the data cannot support (its
source or column is absent) is null for everyone, and every null feature of a customer carries its
reason in ``null_reasons``; counts are 0 only when the source exists and the customer had none.

A rerun of an as_of whose inputs have not changed since its last successful run (``inputs_fingerprint``:
the silver tables' Delta commits, the config and code, the previous snapshot the lifecycle transitions
compare with) and whose rows are still as written is skipped; the fingerprints are kept in the stage's
ops.run_log details.
"""

from __future__ import annotations

import datetime as dt
import logging
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
from microseg.runtime import lake, provenance, tables
from microseg.runtime.config import Config, FeaturesConfig
from microseg.runtime.errors import ReconciliationError
from microseg.runtime.runlog import Entry, RunContext, StageReport, unchanged_since
from microseg.runtime.sparkops import cached, described

log = logging.getLogger(__name__)


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


def silver_inputs(spark: SparkSession, cfg: Config) -> Inputs:
    def read(name: str) -> DataFrame | None:
        return tables.read(spark, cfg, lake.silver(name)) if tables.exists(spark, cfg, lake.silver(name)) else None

    return Inputs(**{f.name: read(f.name) for f in fields(Inputs)})


def inputs_fingerprint(spark: SparkSession, cfg: Config, catalog: Catalog, as_of: dt.date) -> dict:
    """What the snapshot of ``as_of`` is computed from: each silver table's latest Delta commit
    (``provenance.table_state``), the digest of the config the stage reads (the features section and the
    catalog), the code (``provenance.code_version``), and the previous snapshot with the fingerprint of its
    macro segments (the lifecycle transitions compare with it). A few small Spark jobs, no pass over silver."""
    previous = tables.previous_as_of(spark, cfg, lake.CUSTOMER_FEATURES, as_of)
    before = None
    if previous is not None:
        rows = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(previous))
        before = provenance.rows_fingerprint(rows.select("customer_id", "macro_segment"))
    return {
        "silver": {f.name: provenance.table_state(spark, cfg, lake.silver(f.name)) for f in fields(Inputs)},
        "config": provenance.digest({"features": cfg.features, "catalog": catalog}),
        "code": provenance.code_version(),
        "previous_as_of": previous.isoformat() if previous else None,
        "previous_macro_segments": before,
    }


def outputs_fingerprint(spark: SparkSession, cfg: Config, as_of: dt.date) -> dict:
    """The fingerprints of the rows the stage wrote for ``as_of`` (``provenance.rows_fingerprint``)."""
    found = {}
    for table in (lake.CUSTOMER_FEATURES, lake.LIFECYCLE_TRANSITIONS):
        if not tables.exists(spark, cfg, table):
            found[table.name] = None
            continue
        found[table.name] = provenance.rows_fingerprint(
            tables.read(spark, cfg, table).where(F.col("as_of") == F.lit(as_of))
        )
    return found


def run_features(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Write gold.customer_features for run.as_of (replacing that snapshot only) and the lifecycle transitions;
    skipped when nothing it reads changed since its last successful run of run.as_of (``inputs_fingerprint``)
    and what that run wrote is still there.

    Customers per macro segment and customers without profiling consent are counted in the pass that
    writes the snapshot (Spark Observations), and must add up to the rows the Delta commit reports.

    Raises:
        ReconciliationError: if the rows counted and the rows committed differ.
    """
    catalog = load_catalog(cfg)
    with described(spark, "features: input fingerprint"):
        fingerprint = {"inputs": inputs_fingerprint(spark, cfg, catalog, run.as_of)}
        last = unchanged_since(
            spark, cfg, run.as_of, ("features", lake.CUSTOMER_FEATURES.name), fingerprint["inputs"],
            lambda _: outputs_fingerprint(spark, cfg, run.as_of),
        )  # fmt: skip
    if last is not None:
        return skipped_features(run, *last)
    previous = fingerprint["inputs"]["previous_as_of"]
    report = compute_features(spark, cfg, run, catalog, dt.date.fromisoformat(previous) if previous else None)
    with described(spark, "features: output fingerprint"):
        fingerprint["outputs"] = outputs_fingerprint(spark, cfg, run.as_of)
    report.entries[0].details["fingerprint"] = fingerprint
    return report


def skipped_features(run: RunContext, last_run: str, details: dict) -> StageReport:
    """The report of a skipped features stage: nothing written; the facts of the run it relies on, and why."""
    inputs, computed_by = details["fingerprint"]["inputs"], details.get("computed_by_run", last_run)
    versions = ", ".join(f"{name} {state.split()[0]}" for name, state in inputs["silver"].items() if state)
    line = (
        f"features: skipped, as_of {run.as_of} unchanged since run {computed_by}: the same silver tables "
        f"({versions}), config {inputs['config'][:8]} and code {inputs['code'][:8]}, and its rows in "
        f"{lake.CUSTOMER_FEATURES} as that run wrote them"
    )
    log.info(line)
    kept = {k: details.get(k) for k in ("feature_version", "macro_segments", "features_unsupported", "previous_as_of")}
    entry = Entry(
        lake.CUSTOMER_FEATURES.name,
        rows_in=0,
        rows_written=0,
        rows_quarantined=0,
        details={**kept, "skipped": line, "computed_by_run": computed_by, "fingerprint": details["fingerprint"]},
    )
    info = {"skipped": line, "features_unsupported": kept["features_unsupported"] or {}}
    return StageReport("features", [entry], info={**info, "macro_segments": kept["macro_segments"] or {}})


def compute_features(
    spark: SparkSession, cfg: Config, run: RunContext, catalog: Catalog, previous: dt.date | None
) -> StageReport:
    """Compute and write the snapshot of run.as_of and its lifecycle transitions from the ``previous`` snapshot
    (``run_features``)."""
    inputs = silver_inputs(spark, cfg)
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
