"""Delta table names, paths, reads and writes: the one place that knows where tables live.

A table is named ``<layer>.<table>`` (bronze.orders, gold.customer_features) and
stored at ``<lake.root>/<layer>/<table>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime.config import Config
from microseg.runtime.errors import TableMissingError


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


class CommitMetrics(Mapping[str, int]):
    """The ``operationMetrics`` Delta recorded with a table's latest commit, as ints, read when first looked at.

    Every write here returns one, so what it wrote is known without a second pass over the data:
    numOutputRows (numCopiedRows of them copied from files it rewrote) for a write; numSourceRows,
    numTargetRowsInserted, numTargetRowsUpdated, numTargetRowsDeleted, numTargetRowsCopied... for a
    MERGE. Reading them costs one small Spark job (Delta's history), spent only by a caller that
    looks: look before anything else commits to the same table.
    """

    def __init__(self, spark: SparkSession, path: str) -> None:
        self._spark, self._path = spark, path
        self._metrics: dict[str, int] | None = None

    def _load(self) -> dict[str, int]:
        if self._metrics is None:
            row = DeltaTable.forPath(self._spark, self._path).history(1).select("operationMetrics").first()
            found = (row["operationMetrics"] if row else None) or {}
            self._metrics = {k: int(v) for k, v in found.items() if v is not None and v.lstrip("-").isdigit()}
        return self._metrics

    def __getitem__(self, key: str) -> int:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    @property
    def rows_written(self) -> int:
        """Rows of the written DataFrame the commit inserted or updated (not rows copied from rewritten files)."""
        if "numTargetRowsInserted" in self:
            return self["numTargetRowsInserted"] + self["numTargetRowsUpdated"]
        return self.get("numOutputRows", 0) - self.get("numCopiedRows", 0)


def overwrite(df: DataFrame, cfg: Config, name: str) -> CommitMetrics:
    """Replace the table with ``df`` (schema too); returns the commit's metrics (numOutputRows: rows written)."""
    path = table_path(cfg, name)
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    return CommitMetrics(df.sparkSession, path)


def replace_where(
    df: DataFrame, cfg: Config, name: str, condition: str, partition_by: str | None = None
) -> CommitMetrics:
    """Atomically replace the rows matching ``condition`` (for example one as_of) with ``df``.

    Returns the commit's metrics: numOutputRows counts the rows written, numCopiedRows of them kept from
    files it rewrote (``rows_written`` subtracts them), numDeletedRows the rows it replaced.
    """
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
    return CommitMetrics(spark, path)


def append(df: DataFrame, cfg: Config, name: str) -> CommitMetrics:
    """Append ``df`` to the table; returns the commit's metrics (numOutputRows: rows written)."""
    path = table_path(cfg, name)
    df.write.format("delta").mode("append").option("mergeSchema", "true").save(path)
    return CommitMetrics(df.sparkSession, path)


def merge(
    df: DataFrame,
    cfg: Config,
    name: str,
    keys: list[str],
    newer_than: str | None = None,
    change_data_feed: bool = False,
) -> CommitMetrics:
    """Upsert ``df`` into the table on ``keys``; creates the table on first write.

    With ``newer_than`` (a column), a matched row is replaced only by a row at least as new. With
    ``change_data_feed``, the table records its changes for consumers (Delta's change data feed).

    Returns the commit's metrics: numTargetRowsInserted, numTargetRowsUpdated, numTargetRowsDeleted,
    numTargetRowsCopied, numSourceRows... for a MERGE; numOutputRows when this write created the table.
    """
    spark = df.sparkSession
    path = table_path(cfg, name)
    if not DeltaTable.isDeltaTable(spark, path):
        writer = df.write.format("delta").mode("overwrite")
        if change_data_feed:
            writer = writer.option("delta.enableChangeDataFeed", "true")
        writer.save(path)
        return CommitMetrics(spark, path)
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(df.alias("s"), condition)
        .whenMatchedUpdateAll(condition=f"s.`{newer_than}` >= t.`{newer_than}`" if newer_than else None)
        .whenNotMatchedInsertAll()
        .execute()
    )
    return CommitMetrics(spark, path)


CORRUPT = "_corrupt_record"
