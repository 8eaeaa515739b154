"""Segment profiles: size, share, per-feature mean, median and z-score, top features and a label.

A segment's z-score for a feature is (segment mean - population mean) / population standard
deviation, the population being every featured customer of the snapshot (``z_<feature>``); its
z-score within its macro segment takes the customers of its (layer, macro segment) as the population
(``z_in_macro_<feature>``). The label tells a segment from its siblings: it names the layer's
features with the largest |z| within the macro segment (at least ``label_min_z``), in the catalog's
comparatives, for example "more recent and spends less than other churned customers". No two
segments of one (layer, macro segment) share a label: while two do, each names its next feature
(even below ``label_min_z``), and as a last resort its segment id. A segment smaller than
``k_anonymity`` shows its size only.

The profile stage is skipped for an as_of whose inputs have not changed since its last successful run
(``inputs_fingerprint``) while what it wrote is still there; the fingerprints are in its ops.run_log details.
"""

from __future__ import annotations

import logging
import math

from pyspark.sql import Column, DataFrame, SparkSession
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
VALUE_COLUMNS = ("mean_clv", "median_clv", "mean_p_alive", "mean_churn_probability", "value_at_risk")


def _ranked(z: dict[str, float | None], layer_features: list[str]) -> list[tuple[str, float]]:
    """The layer's features with a non-zero z-score, the largest |z| first (ties by name)."""
    scored = ((f, z[f]) for f in dict.fromkeys(layer_features) if z.get(f) is not None and z[f] != 0)
    return sorted(scored, key=lambda item: (-abs(item[1]), item[0]))


def _among(macro: str | None) -> str:
    return "other customers" if macro in (None, ALL) else f"other {macro.replace('_', '-')} customers"


def _words(used: list[tuple[str, float]], catalog: Catalog, macro: str | None) -> str:
    phrases = [catalog.comparative(f, v > 0) for f, v in used]
    if not phrases:
        return f"{TYPICAL} of the {_among(macro).removeprefix('other ')}"
    listed = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
    return f"{listed} than {_among(macro)}"


def label(
    z: dict[str, float | None],
    layer_features: list[str],
    catalog: Catalog,
    top: int,
    min_z: float,
    macro: str | None = None,
) -> tuple[str, list[str]]:
    """The segment's label and its top features ("name (+1.8)"), from the layer's features' z-scores within
    its macro segment, as a comparison with the macro segment's other customers."""
    used = [(f, v) for f, v in _ranked(z, layer_features) if abs(v) >= min_z][:top]
    return _words(used, catalog, macro), [f"{f} ({v:+.1f})" for f, v in used]


def distinct_labels(
    zs: dict[str, dict[str, float | None]],
    layer_features: list[str],
    catalog: Catalog,
    top: int,
    min_z: float,
    macro: str | None = None,
) -> dict[str, tuple[str, list[str]]]:
    """``label`` for each segment (id -> z-scores within the macro segment) of one (layer, macro), made distinct.

    While segments share a label, each of them names its next feature by |z| (below ``min_z`` too); one with
    no feature left takes its segment id. Deterministic: the same z-scores give the same labels.
    """
    ranked = {s: _ranked(z, layer_features) for s, z in zs.items()}
    counts = {s: len([1 for _, v in ranked[s] if abs(v) >= min_z][:top]) for s in zs}
    with_id: set[str] = set()

    def text(s: str) -> str:
        words = _words(ranked[s][: counts[s]], catalog, macro)
        return f"{words} (segment {s})" if s in with_id else words

    for _ in range(sum(len(r) for r in ranked.values()) + 2):
        texts = {s: text(s) for s in zs}
        shared = [s for s in zs if list(texts.values()).count(texts[s]) > 1]
        if not shared:
            break
        for s in shared:
            if counts[s] < len(ranked[s]):
                counts[s] += 1
            else:
                with_id.add(s)
    return {s: (text(s), [f"{f} ({v:+.1f})" for f, v in ranked[s][: counts[s]]]) for s in zs}


def _z(mean: float | None, centre: float | None, sd: float | None) -> float | None:
    if mean is None or centre is None or not sd or math.isnan(sd):
        return None
    return _round((mean - centre) / sd)


def value_aggregates() -> list[Column]:
    """A segment's value columns from gold.customer_value's rows of its customers (null where they have none)."""
    return [
        F.avg("clv").alias("mean_clv"),
        F.percentile_approx("clv", 0.5, MEDIAN_ACCURACY).alias("median_clv"),
        F.avg("p_alive").alias("mean_p_alive"),
        F.avg("churn_probability").alias("mean_churn_probability"),
        F.sum(F.col("clv") * F.col("churn_probability")).alias("value_at_risk"),
    ]


def build_profiles(
    assigned: DataFrame,
    features: DataFrame,
    catalog: Catalog,
    cfg: Config,
    as_of: object,
    value: DataFrame | None = None,
) -> DataFrame:
    """One row per (layer, macro_segment, segment_id) of ``assigned`` with its statistics and label, and its
    value (``VALUE_COLUMNS``) from ``value`` (gold.customer_value of the snapshot; None: no such table)."""
    names = catalog.names
    population = features.agg(
        *[F.avg(f).alias(f"m_{f}") for f in names], *[F.stddev_pop(f).alias(f"s_{f}") for f in names]
    ).first()
    joined = assigned.select(*KEYS, "customer_id").join(features.select("customer_id", *names), "customer_id")
    if value is None:
        value = assigned.sparkSession.createDataFrame([], lake.CUSTOMER_VALUE.ddl)
    joined = joined.join(value.select("customer_id", "clv", "p_alive", "churn_probability"), "customer_id", "left")
    # A segment belongs to one macro segment, or to all of them when models span them (by_macro: false).
    macro = F.first("macro_segment") if cfg.train.by_macro else F.lit(ALL)
    stats = joined.groupBy("layer", "segment_id").agg(
        macro.alias("macro_segment"),
        F.count("*").alias("size"),
        *[F.avg(f).alias(f"mean_{f}") for f in names],
        *[F.percentile_approx(f, 0.5, MEDIAN_ACCURACY).cast("double").alias(f"median_{f}") for f in names],
        # Counts and means of squares: the (layer, macro) mean and standard deviation follow exactly from them.
        *[F.count(f).alias(f"n_{f}") for f in names],
        *[F.avg(F.col(f) * F.col(f)).alias(f"q_{f}") for f in names],
        *value_aggregates(),
    )
    rows = stats.collect()
    totals: dict[str, int] = {}
    macro_totals: dict[tuple[str, str], int] = {}
    for r in rows:
        totals[r["layer"]] = totals.get(r["layer"], 0) + r["size"]
        macro_totals[(r["layer"], r["macro_segment"])] = (
            macro_totals.get((r["layer"], r["macro_segment"]), 0) + r["size"]
        )
    within = _macro_moments(rows, names)
    profile = cfg.profile
    records = []
    for r in sorted(rows, key=lambda r: tuple(str(r[k]) for k in KEYS)):
        visible = r["size"] >= profile.k_anonymity
        group = within[(r["layer"], r["macro_segment"])]
        z, z_in = {}, {}
        for f in names:
            mean = r[f"mean_{f}"] if visible else None
            z[f] = _z(mean, population[f"m_{f}"], population[f"s_{f}"])
            z_in[f] = _z(mean, *group[f])
        record = {
            "as_of": as_of,
            **{k: r[k] for k in KEYS},
            "size": r["size"],
            "share": round(r["size"] / totals[r["layer"]], 4),
            "share_of_macro": round(r["size"] / macro_totals[(r["layer"], r["macro_segment"])], 4),
            "label": None,
            "top_features": None,
            "_z_in": z_in if visible else None,
        }
        for f in names:
            record[f"mean_{f}"] = _round(r[f"mean_{f}"]) if visible else None
            record[f"median_{f}"] = _round(r[f"median_{f}"]) if visible else None
            record[f"z_{f}"] = z[f]
            record[f"z_in_macro_{f}"] = z_in[f]
        for column in VALUE_COLUMNS:
            record[column] = _round(r[column]) if visible else None
        records.append(record)
    _label_within_macro(records, cfg, catalog, names)
    return assigned.sparkSession.createDataFrame(records, schema=profile_schema(names))


def _macro_moments(rows: list, names: list[str]) -> dict[tuple[str, str], dict[str, tuple[float | None, float]]]:
    """Per (layer, macro segment) and feature: the mean and population standard deviation over its customers,
    from each segment's count, mean and mean of squares of the feature."""
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        group = sums.setdefault((r["layer"], r["macro_segment"]), {f: [0.0, 0.0, 0.0] for f in names})
        for f in names:
            n = r[f"n_{f}"] or 0
            if n:
                group[f][0] += n
                group[f][1] += n * r[f"mean_{f}"]
                group[f][2] += n * r[f"q_{f}"]
    moments = {}
    for key, group in sums.items():
        moments[key] = {}
        for f, (n, total, squares) in group.items():
            if not n:
                moments[key][f] = (None, 0.0)
                continue
            mean = total / n
            variance = max(squares / n - mean * mean, 0.0)
            # A spread at the rounding noise of the sums is no spread: the feature is constant in the macro segment.
            sd = math.sqrt(variance) if variance > 1e-12 * max(1.0, mean * mean) else 0.0
            moments[key][f] = (mean, sd)
    return moments


def _label_within_macro(records: list[dict], cfg: Config, catalog: Catalog, names: list[str]) -> None:
    """Each visible segment's label and top features, distinct within its (layer, macro segment)."""
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for record in records:
        z_in = record.pop("_z_in")
        if z_in is not None:
            groups.setdefault((record["layer"], record["macro_segment"]), {})[record["segment_id"]] = z_in
    by_id = {(r["layer"], r["segment_id"]): r for r in records}
    profile = cfg.profile
    for (layer, macro), zs in groups.items():
        layer_features = cfg.train.active_layers[layer].features if layer in cfg.train.active_layers else names
        labels = distinct_labels(zs, layer_features, catalog, profile.top_features, profile.label_min_z, macro)
        for segment, (text, top) in labels.items():
            by_id[(layer, segment)].update(label=text, top_features=top)


def _round(value: float | None) -> float | None:
    """``value`` to 4 decimals, the same on every run.

    A Spark sum of doubles depends on the order in which partitions merge, in the last bits; a mean of
    cents over n customers often lands exactly on half of the 4th decimal, where those bits decide the
    rounding. Rounding to 12 significant digits first takes them away.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(f"{float(value):.12g}"), 4)


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
                (
                    "z_in_macro",
                    "z-score within the macro segment",
                    "(segment mean - mean of its layer and macro segment) / their standard deviation",
                ),
            )
        ]
    fields += [T.StructField(c, T.DoubleType(), metadata={"comment": lake.COMMENTS[c]}) for c in VALUE_COLUMNS]
    return T.StructType(fields)


def snapshot_features(spark: SparkSession, cfg: Config, as_of: object, catalog: Catalog) -> DataFrame:
    features = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(as_of))
    return features.select("customer_id", *[F.col(f).cast("double") for f in catalog.names])


def snapshot_value(spark: SparkSession, cfg: Config, as_of: object) -> DataFrame | None:
    """gold.customer_value of the snapshot; None when the table does not exist (the value stage has not run)."""
    return _on(spark, cfg, lake.CUSTOMER_VALUE, as_of)


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
        features = snapshot_features(spark, cfg, run.as_of, catalog)
        value = snapshot_value(spark, cfg, run.as_of)
        profiles = build_profiles(assignments, features, catalog, cfg, run.as_of, value)
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
