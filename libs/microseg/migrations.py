"""Movement of customers between segments (or lifecycle stages) from one snapshot to the next."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

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
