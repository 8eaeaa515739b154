"""Segment profiles: size, share, per-feature mean, median and z-score, top features and a label.

A segment's z-score for a feature is (segment mean - population mean) / population standard
deviation, the population being every featured customer of the snapshot. The label names the
layer's features with the largest |z| (at least ``label_min_z``), in the catalog's words for high
and low values, for example "high spend, frequent, email-engaged". A segment smaller than
``k_anonymity`` shows its size only.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from microseg.features.catalog import Catalog, load_catalog
from microseg.outputs.migrations import snapshot_migrations
from microseg.runtime import lake, tables
from microseg.runtime.config import Config
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.segmentation.pipeline import ALL

PROFILES = lake.SEGMENT_PROFILES
KEYS = ["layer", "macro_segment", "segment_id"]
TYPICAL = "typical"
# percentile_approx keeps one sketch per segment and feature, of a size that grows with its accuracy:
# Spark's default (10,000) needs more than a 4 GB driver at a million customers (40+ features, ~50
# segments). 1,000 puts the median within 0.1% of the segment's rows of the exact one.
MEDIAN_ACCURACY = 1_000


def label(
    z: dict[str, float | None], layer_features: list[str], catalog: Catalog, top: int, min_z: float
) -> tuple[str, list[str]]:
    """The segment's label and its top features ("name (+1.8)"), from the layer's features' z-scores."""
    ranked = sorted(
        ((f, z[f]) for f in layer_features if z.get(f) is not None and abs(z[f]) >= min_z),
        key=lambda item: (-abs(item[1]), item[0]),
    )[:top]
    if not ranked:
        return TYPICAL, []
    words = [catalog.feature(f).high if v > 0 else catalog.feature(f).low for f, v in ranked]
    return ", ".join(words), [f"{f} ({v:+.1f})" for f, v in ranked]


def build_profiles(assigned: DataFrame, features: DataFrame, catalog: Catalog, cfg: Config, as_of: object) -> DataFrame:
    """One row per (layer, macro_segment, segment_id) of ``assigned`` with its statistics and label."""
    names = catalog.names
    population = features.agg(
        *[F.avg(f).alias(f"m_{f}") for f in names], *[F.stddev_pop(f).alias(f"s_{f}") for f in names]
    ).first()
    joined = assigned.select(*KEYS, "customer_id").join(features.select("customer_id", *names), "customer_id")
    # A segment belongs to one macro segment, or to all of them when models span them (by_macro: false).
    macro = F.first("macro_segment") if cfg.train.by_macro else F.lit(ALL)
    stats = joined.groupBy("layer", "segment_id").agg(
        macro.alias("macro_segment"),
        F.count("*").alias("size"),
        *[F.avg(f).alias(f"mean_{f}") for f in names],
        *[F.percentile_approx(f, 0.5, MEDIAN_ACCURACY).cast("double").alias(f"median_{f}") for f in names],
    )
    rows = stats.collect()
    totals: dict[str, int] = {}
    macro_totals: dict[tuple[str, str], int] = {}
    for r in rows:
        totals[r["layer"]] = totals.get(r["layer"], 0) + r["size"]
        macro_totals[(r["layer"], r["macro_segment"])] = (
            macro_totals.get((r["layer"], r["macro_segment"]), 0) + r["size"]
        )
    profile = cfg.profile
    records = []
    for r in sorted(rows, key=lambda r: tuple(str(r[k]) for k in KEYS)):
        visible = r["size"] >= profile.k_anonymity
        z = {}
        for f in names:
            mean, sd = r[f"mean_{f}"], population[f"s_{f}"]
            z[f] = round((mean - population[f"m_{f}"]) / sd, 4) if visible and mean is not None and sd else None
        layer_features = (
            cfg.train.active_layers[r["layer"]].features if r["layer"] in cfg.train.active_layers else names
        )
        text, top = (
            label(z, layer_features, catalog, profile.top_features, profile.label_min_z) if visible else (None, None)
        )
        record = {
            "as_of": as_of,
            **{k: r[k] for k in KEYS},
            "size": r["size"],
            "share": round(r["size"] / totals[r["layer"]], 4),
            "share_of_macro": round(r["size"] / macro_totals[(r["layer"], r["macro_segment"])], 4),
            "label": text,
            "top_features": top,
        }
        for f in names:
            record[f"mean_{f}"] = _round(r[f"mean_{f}"]) if visible else None
            record[f"median_{f}"] = _round(r[f"median_{f}"]) if visible else None
            record[f"z_{f}"] = z[f]
        records.append(record)
    return assigned.sparkSession.createDataFrame(records, schema=profile_schema(names))


def _round(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)


def profile_schema(names: list[str]) -> T.StructType:
    fields = [
        T.StructField("as_of", T.DateType()),
        *[T.StructField(k, T.StringType()) for k in KEYS],
        T.StructField("size", T.LongType()),
        T.StructField("share", T.DoubleType()),
        T.StructField("share_of_macro", T.DoubleType()),
        T.StructField("label", T.StringType()),
        T.StructField("top_features", T.ArrayType(T.StringType())),
    ]
    for f in names:
        fields += [
            T.StructField(f"{p}_{f}", T.DoubleType(), metadata={"comment": f"{what} of {f} {among}"})
            for p, what, among in (
                ("mean", "Mean", "in the segment"),
                ("median", "Median (approximate)", "in the segment"),
                ("z", "z-score", "(segment mean - population mean) / population standard deviation"),
            )
        ]
    return T.StructType(fields)


def snapshot_features(spark: SparkSession, cfg: Config, as_of: object, catalog: Catalog) -> DataFrame:
    features = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(as_of))
    return features.select("customer_id", *[F.col(f).cast("double") for f in catalog.names])


def run_profile(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Write gold.segment_migrations and the segment report for run.as_of (replacing that snapshot only).

    gold.segment_profiles of the snapshot is written by the assign stage, which needs the labels; it
    is computed here only when that snapshot has none (a lake assigned by an older version).
    """
    from microseg.outputs.report import write_report

    catalog = load_catalog(cfg)
    on_date = F.col("as_of") == F.lit(run.as_of)
    assignments = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(on_date)
    profiles = tables.read(spark, cfg, PROFILES).where(on_date) if tables.exists(spark, cfg, PROFILES) else None
    sizes = profiles.select("size").collect() if profiles is not None else []
    if not sizes:
        profiles = build_profiles(
            assignments, snapshot_features(spark, cfg, run.as_of, catalog), catalog, cfg, run.as_of
        )
        tables.replace_where(profiles, cfg, PROFILES, f"as_of = '{run.as_of}'")
        sizes = profiles.select("size").collect()
    migrations, previous = snapshot_migrations(spark, cfg, run.as_of)
    if migrations is not None:
        tables.replace_where(migrations, cfg, lake.SEGMENT_MIGRATIONS, f"as_of = '{run.as_of}'")
    report_path = write_report(spark, cfg, run, catalog)
    report = StageReport("profile", info={"report": report_path, "previous_as_of": str(previous) if previous else None})
    # Every assignment of the snapshot belongs to exactly one profiled segment.
    report.entries.append(
        Entry(
            PROFILES.name,
            rows_in=sum(r["size"] for r in sizes),
            rows_written=len(sizes),
            details={"report": report_path},
        )
    )
    return report
