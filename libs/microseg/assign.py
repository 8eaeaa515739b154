"""Assign stage: score gold.customer_features with the champion model into gold.segment_assignments."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from microseg import tables
from microseg.config import Config
from microseg.models import load_champion, model_inputs
from microseg.runlog import Entry, RunContext, StageReport


def run_assign(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """MERGE one row per (customer_id, as_of) with the customer's segment of the champion model."""
    layer = cfg.train.layer
    model, facts = load_champion(cfg, layer)
    features = model_inputs(spark, cfg, run)
    scored = model.transform(features).select(
        "customer_id",
        F.lit(run.as_of).alias("as_of"),
        F.lit(layer).alias("layer"),
        F.concat(F.lit(f"{layer}-all-"), F.col("cluster").cast("string")).alias("segment_id"),
        F.lit(facts["model"]).alias("model_name"),
        F.lit(facts["version"]).alias("model_version"),
        F.lit(facts["run_id"]).alias("training_run_id"),
    )
    tables.merge(scored, cfg, "gold.segment_assignments", keys=["customer_id", "as_of"])
    assigned = tables.read(spark, cfg, "gold.segment_assignments").where(F.col("as_of") == F.lit(run.as_of))
    sizes = {r["segment_id"]: r["count"] for r in assigned.groupBy("segment_id").count().collect()}
    total = sum(sizes.values())
    report = StageReport("assign", info={"segments": dict(sorted(sizes.items())), **facts})
    report.entries.append(
        Entry("gold.segment_assignments", rows_in=features.count(), rows_written=total, rows_quarantined=0)
    )
    return report
