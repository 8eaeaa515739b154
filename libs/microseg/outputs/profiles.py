"""Segment profiles: size, share, per-feature mean, median and z-score, top features and a label.

A segment's z-score for a feature is (segment mean - population mean) / population standard
deviation, the population being every featured customer of the snapshot. The label names the
layer's features with the largest |z| (at least ``label_min_z``), in the catalog's words for high
and low values, for example "high spend, frequent, email-engaged". A segment smaller than
``k_anonymity`` shows its size only.

The profile stage is skipped for an as_of whose inputs have not changed since its last successful run
(``inputs_fingerprint``) while what it wrote is still there; the fingerprints are in its ops.run_log details.
"""

from __future__ import annotations

import logging
import math

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from microseg.features.catalog import Catalog, load_catalog
from microseg.outputs.migrations import snapshot_migrations
from microseg.runtime import lake, provenance, storage, tables
from microseg.runtime.config import Config
from microseg.runtime.runlog import Entry, RunContext, StageReport, unchanged_since
from microseg.runtime.sparkops import described
from microseg.segmentation.pipeline import ALL

log = logging.getLogger(__name__)

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


def _on(spark: SparkSession, cfg: Config, table: lake.Table, as_of: object) -> DataFrame | None:
    """The rows of one snapshot of a table; None if the table does not exist."""
    if not tables.exists(spark, cfg, table):
        return None
    return tables.read(spark, cfg, table).where(F.col("as_of") == F.lit(as_of))


def _fingerprint(df: DataFrame | None) -> str | None:
    return provenance.rows_fingerprint(df) if df is not None else None


def inputs_fingerprint(spark: SparkSession, cfg: Config, catalog: Catalog, as_of: object) -> dict:
    """What the profile stage of ``as_of`` reads, as fingerprints of rows (``provenance.rows_fingerprint``):
    the snapshot's assignments (their training runs name the models whose curves the report shows), profiles
    and features, the previous snapshot's assignments (the migrations), and digests of the config it reads
    (profile, the layers, the catalog) and of the code. A few small Spark jobs over one or two snapshots."""
    previous = tables.previous_as_of(spark, cfg, lake.SEGMENT_ASSIGNMENTS, as_of)
    before = _on(spark, cfg, lake.SEGMENT_ASSIGNMENTS, previous) if previous is not None else None
    kept = ("customer_id", "layer", "segment_id", "macro_segment")
    config = {"profile": cfg.profile, "layers": cfg.train.layers, "by_macro": cfg.train.by_macro, "catalog": catalog}
    return {
        "assignments": _fingerprint(_on(spark, cfg, lake.SEGMENT_ASSIGNMENTS, as_of)),
        "profiles": _fingerprint(_on(spark, cfg, PROFILES, as_of)),
        "features": _fingerprint(snapshot_features(spark, cfg, as_of, catalog)),
        "previous_as_of": str(previous) if previous is not None else None,
        "previous_assignments": _fingerprint(before.select(*kept)) if before is not None else None,
        "config": provenance.digest(config),
        "code": provenance.code_version(),
    }


def outputs_fingerprint(spark: SparkSession, cfg: Config, as_of: object, report: str | None) -> dict:
    """The snapshot's migrations as written, and the report's path if the file is still there."""
    fs, path = storage.filesystem(cfg, report) if report else (None, None)
    return {
        "migrations": _fingerprint(_on(spark, cfg, lake.SEGMENT_MIGRATIONS, as_of)),
        "report": report if fs is not None and fs.exists(path) else None,
    }


def run_profile(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Write gold.segment_migrations and the segment report for run.as_of (replacing that snapshot only);
    skipped when nothing it reads changed since its last successful run of run.as_of and what that run
    wrote is still there (``inputs_fingerprint``, ``outputs_fingerprint``).

    gold.segment_profiles of the snapshot is written by the assign stage, which needs the labels; it
    is computed here only when that snapshot has none (a lake assigned by an older version).
    """
    catalog = load_catalog(cfg)
    with described(spark, "profile: input fingerprint"):
        inputs = inputs_fingerprint(spark, cfg, catalog, run.as_of)
        last = unchanged_since(
            spark, cfg, run.as_of, ("profile", PROFILES.name), inputs,
            lambda details: outputs_fingerprint(spark, cfg, run.as_of, details.get("report")),
        )  # fmt: skip
    if last is not None:
        return skipped_profile(run, *last)
    report = compute_profile(spark, cfg, run, catalog)
    if report.info.pop("profiles_written"):  # this run wrote the snapshot's profiles: they are its input now
        inputs["profiles"] = _fingerprint(_on(spark, cfg, PROFILES, run.as_of))
    outputs = outputs_fingerprint(spark, cfg, run.as_of, report.info["report"])
    report.entries[0].details["fingerprint"] = {"inputs": inputs, "outputs": outputs}
    return report


def skipped_profile(run: RunContext, last_run: str, details: dict) -> StageReport:
    """The report of a skipped profile stage: nothing written; the report of the run it relies on, and why."""
    inputs, computed_by = details["fingerprint"]["inputs"], details.get("computed_by_run", last_run)
    line = (
        f"profile: skipped, as_of {run.as_of} unchanged since run {computed_by}: the same assignments, profiles "
        f"and features of the snapshot (and of {inputs['previous_as_of'] or 'no previous snapshot'}), config "
        f"{inputs['config'][:8]} and code {inputs['code'][:8]}; its migrations and report {details['report']} "
        "are as that run wrote them"
    )
    log.info(line)
    entry = Entry(
        PROFILES.name,
        rows_in=0,
        rows_written=0,
        rows_quarantined=0,
        details={"report": details["report"], "skipped": line, "computed_by_run": computed_by,
                 "fingerprint": details["fingerprint"]},
    )  # fmt: skip
    return StageReport("profile", [entry], info={"report": details["report"], "skipped": line})


def compute_profile(spark: SparkSession, cfg: Config, run: RunContext, catalog: Catalog) -> StageReport:
    """The profile stage's work (``run_profile``); info["profiles_written"] says whether it wrote the profiles."""
    from microseg.outputs.report import write_report

    on_date = F.col("as_of") == F.lit(run.as_of)
    assignments = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(on_date)
    profiles = tables.read(spark, cfg, PROFILES).where(on_date) if tables.exists(spark, cfg, PROFILES) else None
    sizes = profiles.select("size").collect() if profiles is not None else []
    written = not sizes
    if written:
        profiles = build_profiles(
            assignments, snapshot_features(spark, cfg, run.as_of, catalog), catalog, cfg, run.as_of
        )
        tables.replace_where(profiles, cfg, PROFILES, f"as_of = '{run.as_of}'")
        sizes = profiles.select("size").collect()
    migrations, previous = snapshot_migrations(spark, cfg, run.as_of)
    if migrations is not None:
        tables.replace_where(migrations, cfg, lake.SEGMENT_MIGRATIONS, f"as_of = '{run.as_of}'")
    report_path = write_report(spark, cfg, run, catalog)
    previous_as_of = str(previous) if previous else None
    report = StageReport(
        "profile", info={"report": report_path, "previous_as_of": previous_as_of, "profiles_written": written}
    )
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
