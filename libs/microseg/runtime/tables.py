"""Delta reads and writes of the tables the registry declares (``runtime.lake``): the one place that knows
where tables live (``<lake.root>/<layer>/<table>``) and the only code that writes them.

Every write checks that the table's entry allows it (overwrite, replace, append, merge, type 2), and
takes the key, partition columns and change data feed from the entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import lake
from microseg.runtime.config import Config
from microseg.runtime.errors import TableMissingError
from microseg.runtime.lake import APPEND, MERGE, OVERWRITE, REPLACE, Table

TableRef = Table | str  # a registry entry, or its name (gold.segment_profiles, bronze.orders)


def entry(table: TableRef) -> Table:
    """The registry entry of ``table`` (a name is looked up: an unknown one raises KeyError)."""
    return lake.named(table) if isinstance(table, str) else table


def table_path(cfg: Config, table: TableRef) -> str:
    table = entry(table)
    return f"{cfg.lake_root}/{table.layer}/{table.short_name}"


def exists(spark: SparkSession, cfg: Config, table: TableRef) -> bool:
    return DeltaTable.isDeltaTable(spark, table_path(cfg, table))


def read(spark: SparkSession, cfg: Config, table: TableRef) -> DataFrame:
    """The table as a DataFrame."""
    table = entry(table)
    path = table_path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, path):
        raise TableMissingError(
            f"Delta table {table} does not exist at {path}; run the stage that writes it first "
            f"({table.written_by}: microseg run --stage ...) or check lake.root"
        )
    return spark.read.format("delta").load(path)


def version(spark: SparkSession, cfg: Config, table: TableRef) -> int | None:
    """The table's current Delta version, or None if it does not exist."""
    path = table_path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return DeltaTable.forPath(spark, path).history(1).select("version").first()[0]


def previous_as_of(spark: SparkSession, cfg: Config, table: TableRef, as_of: object) -> object | None:
    """The latest as_of before ``as_of`` in a snapshot table, or None (also when the table does not exist)."""
    if not exists(spark, cfg, table):
        return None
    return read(spark, cfg, table).where(F.col("as_of") < F.lit(as_of)).agg(F.max("as_of")).first()[0]


def delta_table(spark: SparkSession, cfg: Config, table: TableRef) -> DeltaTable:
    """The DeltaTable, for a write the helpers here do not cover (the type 2 merge of segment history)."""
    return DeltaTable.forPath(spark, table_path(cfg, table))


def _allow(table: TableRef, write: str) -> Table:
    """The entry of ``table``, if it allows ``write``."""
    table = entry(table)
    if write not in table.writes:
        raise ValueError(f"{table} allows {', '.join(table.writes)} writes (runtime/lake.py), not {write}")
    return table


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


def overwrite(df: DataFrame, cfg: Config, table: TableRef) -> CommitMetrics:
    """Replace the table with ``df`` (schema too); returns the commit's metrics (numOutputRows: rows written)."""
    table = _allow(table, OVERWRITE)
    path = table_path(cfg, table)
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    return CommitMetrics(df.sparkSession, path)


def replace_where(df: DataFrame, cfg: Config, table: TableRef, condition: str) -> CommitMetrics:
    """Atomically replace the rows matching ``condition`` (for example one as_of) with ``df``.

    A new table is partitioned by the entry's ``partition_by``. Returns the commit's metrics:
    numOutputRows counts the rows written, numCopiedRows of them kept from files it rewrote
    (``rows_written`` subtracts them), numDeletedRows the rows it replaced.
    """
    table = _allow(table, REPLACE)
    path = table_path(cfg, table)
    writer = df.write.format("delta").option("mergeSchema", "true")
    spark = df.sparkSession
    if DeltaTable.isDeltaTable(spark, path):
        writer = writer.mode("overwrite").option("replaceWhere", condition)
    else:
        writer = writer.mode("overwrite")
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
    writer.save(path)
    return CommitMetrics(spark, path)


def append(df: DataFrame, cfg: Config, table: TableRef) -> CommitMetrics:
    """Append ``df`` to the table; returns the commit's metrics (numOutputRows: rows written)."""
    table = _allow(table, APPEND)
    path = table_path(cfg, table)
    df.write.format("delta").mode("append").option("mergeSchema", "true").save(path)
    return CommitMetrics(df.sparkSession, path)


def merge(df: DataFrame, cfg: Config, table: TableRef) -> CommitMetrics:
    """Upsert ``df`` into the table on the entry's keys; creates the table on first write.

    With the entry's ``newer_than`` (a column), a matched row is replaced only by a row at least as
    new. With its ``change_data_feed``, the table records its changes for consumers.

    Returns the commit's metrics: numTargetRowsInserted, numTargetRowsUpdated, numTargetRowsDeleted,
    numTargetRowsCopied, numSourceRows... for a MERGE; numOutputRows when this write created the table.
    """
    table = _allow(table, MERGE)
    spark = df.sparkSession
    path = table_path(cfg, table)
    keys, newer_than = table.keys, table.newer_than
    if not DeltaTable.isDeltaTable(spark, path):
        writer = create_writer(df, table)
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


def create_writer(df: DataFrame, table: Table):  # noqa: ANN201 - pyspark's DataFrameWriter
    """The writer that creates a table as its entry declares (partitioning, change data feed)."""
    writer = df.write.format("delta").mode("overwrite")
    if table.partition_by:
        writer = writer.partitionBy(*table.partition_by)
    if table.change_data_feed:
        writer = writer.option("delta.enableChangeDataFeed", "true")
    return writer


def create(df: DataFrame, cfg: Config, table: TableRef) -> CommitMetrics:
    """Write a table's first rows (any kind of table, a type 2 one too); refuses to replace an existing one."""
    table = entry(table)
    path = table_path(cfg, table)
    if DeltaTable.isDeltaTable(df.sparkSession, path):
        raise ValueError(f"{table} already exists at {path}; create writes a new table only")
    create_writer(df, table).save(path)
    return CommitMetrics(df.sparkSession, path)
