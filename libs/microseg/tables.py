"""Delta table names, paths, reads and writes: the one place that knows where tables live.

A table is named ``<layer>.<table>`` (bronze.orders, gold.customer_features) and
stored at ``<lake.root>/<layer>/<table>``.
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.config import Config
from microseg.errors import TableMissingError


def table_path(cfg: Config, name: str) -> str:
    layer, table = name.split(".", 1)
    return f"{cfg.lake_root}/{layer}/{table}"


def exists(spark: SparkSession, cfg: Config, name: str) -> bool:
    return DeltaTable.isDeltaTable(spark, table_path(cfg, name))


def read(spark: SparkSession, cfg: Config, name: str) -> DataFrame:
    path = table_path(cfg, name)
    if not DeltaTable.isDeltaTable(spark, path):
        raise TableMissingError(
            f"Delta table {name} does not exist at {path}; run the stage that writes it first "
            f"(microseg run --stage ...) or check lake.root"
        )
    return spark.read.format("delta").load(path)


def version(spark: SparkSession, cfg: Config, name: str) -> int | None:
    """The table's current Delta version, or None if it does not exist."""
    path = table_path(cfg, name)
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return DeltaTable.forPath(spark, path).history(1).select("version").first()[0]


def previous_as_of(spark: SparkSession, cfg: Config, name: str, as_of: object) -> object | None:
    """The latest as_of before ``as_of`` in a snapshot table, or None (also when the table does not exist)."""
    if not exists(spark, cfg, name):
        return None
    return read(spark, cfg, name).where(F.col("as_of") < F.lit(as_of)).agg(F.max("as_of")).first()[0]


def overwrite(df: DataFrame, cfg: Config, name: str) -> None:
    (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(table_path(cfg, name)))


def replace_where(df: DataFrame, cfg: Config, name: str, condition: str, partition_by: str | None = None) -> None:
    """Atomically replace the rows matching ``condition`` (for example one as_of) with ``df``."""
    path = table_path(cfg, name)
    writer = df.write.format("delta").option("mergeSchema", "true")
    spark = df.sparkSession
    if DeltaTable.isDeltaTable(spark, path):
        writer = writer.mode("overwrite").option("replaceWhere", condition)
    else:
        writer = writer.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(partition_by)
    writer.save(path)


def append(df: DataFrame, cfg: Config, name: str) -> None:
    df.write.format("delta").mode("append").option("mergeSchema", "true").save(table_path(cfg, name))


def merge(
    df: DataFrame,
    cfg: Config,
    name: str,
    keys: list[str],
    newer_than: str | None = None,
    change_data_feed: bool = False,
) -> None:
    """Upsert ``df`` into the table on ``keys``; creates the table on first write.

    With ``newer_than`` (a column), a matched row is replaced only by a row at least as new. With
    ``change_data_feed``, the table records its changes for consumers (Delta's change data feed).
    """
    spark = df.sparkSession
    path = table_path(cfg, name)
    if not DeltaTable.isDeltaTable(spark, path):
        writer = df.write.format("delta").mode("overwrite")
        if change_data_feed:
            writer = writer.option("delta.enableChangeDataFeed", "true")
        writer.save(path)
        return
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(df.alias("s"), condition)
        .whenMatchedUpdateAll(condition=f"s.`{newer_than}` >= t.`{newer_than}`" if newer_than else None)
        .whenNotMatchedInsertAll()
        .execute()
    )
