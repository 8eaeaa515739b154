"""Movement of customers between segments (or lifecycle stages) from one snapshot to the next."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.features.lifecycle import transition_counts
from microseg.runtime import lake, tables
from microseg.runtime.config import Config

MACRO = "macro_segment"  # the pseudo-layer of lifecycle macro segments in migration tables


def migration_matrix(assignments: DataFrame, from_as_of: object, to_as_of: object) -> DataFrame:
    """Transitions between two snapshots of gold.segment_assignments: per layer, and for macro segments.

    Columns: layer (a layer, or "macro_segment"), from_segment, to_segment, customers, share.
    """
    before = assignments.where(F.col("as_of") == F.lit(from_as_of))
    after = assignments.where(F.col("as_of") == F.lit(to_as_of))
    by_layer = transition_counts(before, after, "segment_id", by=("layer",))

    def macros(df: DataFrame) -> DataFrame:
        return df.select("customer_id", MACRO).distinct().withColumn("layer", F.lit(MACRO))

    by_macro = transition_counts(macros(before), macros(after), MACRO, by=("layer",))
    return by_layer.unionByName(by_macro)


def snapshot_migrations(spark: SparkSession, cfg: Config, as_of: object) -> tuple[DataFrame | None, object]:
    """The migrations into ``as_of`` from the snapshot before it in gold.segment_assignments (None if none)."""
    previous = tables.previous_as_of(spark, cfg, lake.SEGMENT_ASSIGNMENTS, as_of)
    if previous is None:
        return None, None
    assignments = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS)
    matrix = migration_matrix(assignments, previous, as_of)
    return matrix.select(F.lit(as_of).alias("as_of"), F.lit(previous).alias("previous_as_of"), "*"), previous
