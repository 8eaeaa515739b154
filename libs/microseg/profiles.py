"""Profile stage: size, share and feature means of every segment for one as_of."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg import tables
from microseg.catalog import load_catalog
from microseg.config import Config
from microseg.runlog import Entry, RunContext, StageReport


def run_profile(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Write gold.segment_profiles for run.as_of (replacing that snapshot only)."""
    on_date = F.col("as_of") == F.lit(run.as_of)
    assignments = tables.read(spark, cfg, "gold.segment_assignments").where(on_date)
    features = tables.read(spark, cfg, "gold.customer_features").where(on_date).drop("as_of")
    joined = assignments.join(features, on="customer_id", how="inner")
    profiles = (
        joined.groupBy("as_of", "layer", "segment_id")
        .agg(F.count("*").alias("size"), *[F.round(F.avg(c), 3).alias(f"mean_{c}") for c in load_catalog(cfg).names])
        .withColumn("share", F.round(F.col("size") / F.sum("size").over(Window.partitionBy("layer")), 4))
    )
    tables.replace_where(profiles, cfg, "gold.segment_profiles", f"as_of = '{run.as_of}'", partition_by="as_of")
    count = tables.read(spark, cfg, "gold.segment_profiles").where(on_date).count()
    report = StageReport("profile")
    report.entries.append(Entry("gold.segment_profiles", rows_in=assignments.count(), rows_written=count))
    return report
