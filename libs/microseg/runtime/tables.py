"""Delta reads and writes of the tables the registry declares (``runtime.lake``): the one place that knows
where tables live (``<lake.root>/<layer>/<table>``) and the only code that writes them.

Every write checks that the table's entry allows it (overwrite, replace, append, merge, type 2) and
that its columns are the entry's and the table's (a schema changes only by ``microseg migrate``). The
first write creates the table as the entry declares (key, partition columns, change data feed,
comments) and names it in the metastore (``runtime.catalog``). Delta's own operations (MERGE, DELETE,
UPDATE, history) go through ``runtime.delta_ops``, in SQL, so that Spark Connect runs them too. Clean's
staging, which lives only until the quality gate, is plain Parquet (``clean.staging``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from microseg.runtime import catalog, delta_ops, faults, lake, storage
from microseg.runtime.config import Config
from microseg.runtime.errors import TableMissingError, TableSchemaError
from microseg.runtime.lake import APPEND, MERGE, OVERWRITE, REPLACE, TYPE2, Table

TableRef = Table | str  # a registry entry, or its name (gold.segment_profiles, bronze.orders)


def entry(table: TableRef) -> Table:
    """The registry entry of ``table`` (a name is looked up: an unknown one raises KeyError)."""
    return lake.named(table) if isinstance(table, str) else table


def table_path(cfg: Config, table: TableRef) -> str:
    table = entry(table)
    return f"{cfg.lake_root}/{table.layer}/{table.short_name}"


def exists(spark: SparkSession, cfg: Config, table: TableRef) -> bool:
    return delta_ops.is_delta_table(spark, table_path(cfg, table))


def read(spark: SparkSession, cfg: Config, table: TableRef) -> DataFrame:
    """The table as a DataFrame."""
    table = entry(table)
    path = table_path(cfg, table)
    if not delta_ops.is_delta_table(spark, path):
        raise TableMissingError(
            f"Delta table {table} does not exist at {path}; run the stage that writes it first "
            f"({table.written_by}: microseg run --stage ...) or check lake.root"
        )
    return spark.read.format("delta").load(path)


def existing(spark: SparkSession, cfg: Config) -> list[Table]:
    """Every table of the lake: the registry's that exist, and the per-source bronze and quarantine tables found."""
    found = [t for t in lake.TABLES if exists(spark, cfg, t)]
    for layer, make in (("bronze", lake.bronze), ("quarantine", lake.quarantine)):
        names = storage.folders(cfg, f"{cfg.lake_root}/{layer}")
        found += [make(name) for name in names if exists(spark, cfg, make(name))]
    return found


def version(spark: SparkSession, cfg: Config, table: TableRef) -> int | None:
    """The table's current Delta version, or None if it does not exist."""
    path = table_path(cfg, table)
    if not delta_ops.is_delta_table(spark, path):
        return None
    return delta_ops.latest_version(spark, path)


def previous_as_of(spark: SparkSession, cfg: Config, table: TableRef, as_of: object) -> object | None:
    """The latest as_of before ``as_of`` in a snapshot table, or None (also when the table does not exist)."""
    if not exists(spark, cfg, table):
        return None
    return read(spark, cfg, table).where(F.col("as_of") < F.lit(as_of)).agg(F.max("as_of")).first()[0]


def delete(spark: SparkSession, cfg: Config, table: TableRef, condition: str) -> CommitMetrics:
    """DELETE the table's rows matching the SQL ``condition``; returns the commit's metrics (numDeletedRows...)."""
    faults.point("delta", str(table))
    path = table_path(cfg, table)
    delta_ops.delete(spark, path, condition)
    return CommitMetrics(spark, path)


def merge_type2(source: DataFrame, cfg: Config, table: TableRef, on: str, clauses: list[str]) -> CommitMetrics:
    """MERGE ``source`` (``s``) into a type 2 table (``t``) ``on`` a condition with WHEN ``clauses``
    (the caller's, which close and open rows); returns the commit's metrics, none when the MERGE
    changed nothing (Delta then commits nothing)."""
    faults.point("delta", str(table))
    table = entry(table)
    if TYPE2 not in table.writes:
        raise ValueError(f"{table} allows {', '.join(table.writes)} writes (runtime/lake.py), not {TYPE2}")
    spark, path = source.sparkSession, table_path(cfg, table)
    before = delta_ops.latest_version(spark, path)
    delta_ops.merge(spark, path, source, on, clauses)
    return CommitMetrics(spark, path, since=before)


def merge_on_keys(source: DataFrame, cfg: Config, table: TableRef, clauses: list[str]) -> None:
    """MERGE ``source`` (``s``) into an existing merge table (``t``) on the entry's keys with the caller's WHEN
    ``clauses``: a conditional upsert (ops.run_locks: a lock taken over only from a stale holder)."""
    table, source = _allow(table, MERGE, source, cfg)
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in table.keys)
    delta_ops.merge(source.sparkSession, table_path(cfg, table), source, on, clauses)


MIGRATE = "microseg migrate --conf <your conf>"


def check_columns(df: DataFrame, table: Table, existing: StructType | None = None) -> None:
    """Refuse a write whose columns the entry does not declare, or whose declared columns have another type;
    and, with the ``existing`` table's schema, a column the table does not have yet (unless the table drifts).

    A frame may leave declared columns out (Delta writes them as null). Tables whose columns depend
    on a source or on the feature catalog (``more_columns``) take further columns, of any type.

    Raises:
        TableSchemaError: naming the table, the column, and what to do.
    """
    declared = {name: _normalised(kind) for name, kind in table.columns}
    present = {f.name: _normalised(f.dataType.simpleString()) for f in existing.fields} if existing else None
    for field in df.schema.fields:
        kind = declared.get(field.name)
        written = field.dataType.simpleString()
        if kind is None and table.more_columns is None:
            raise TableSchemaError(
                f"{table}: unexpected column {field.name!r} ({written}); its columns are declared in "
                f"libs/microseg/runtime/lake.py (docs/TABLES.md). To add one, declare it there, then run "
                f"`{MIGRATE}` to add it to the existing table before the run that writes it"
            )
        if kind is not None and _normalised(written) != kind:
            raise TableSchemaError(
                f"{table}: column {field.name!r} is {written}, declared {kind} in libs/microseg/runtime/lake.py; "
                f"cast it in the stage that writes it, or change the declaration and run `{MIGRATE}`"
            )
        if present is None or table.drifts:
            continue
        if field.name not in present:
            raise TableSchemaError(
                f"{table}: the table has no column {field.name!r} ({written}) yet; schemas change only by an "
                f"explicit, recorded step: run `{MIGRATE}` to add it (ops.run_log records the change)"
            )
        if present[field.name] != _normalised(written):
            raise TableSchemaError(
                f"{table}: column {field.name!r} is {present[field.name]} in the table, {written} in this write; "
                f"cast it in the stage that writes it (a type change needs a new column and `{MIGRATE}`)"
            )


def _normalised(kind: str) -> str:
    """A Spark SQL type in one spelling (Delta's long and integer are Spark's bigint and int)."""
    return re.sub(r"\blong\b", "bigint", re.sub(r"\binteger\b", "int", kind.replace(" ", "").lower()))


def _allow(table: TableRef, write: str, df: DataFrame, cfg: Config) -> tuple[Table, DataFrame]:
    """The entry of ``table`` and ``df`` with the columns' comments, if the entry allows ``write`` of its columns.

    Checks the write kind, then the columns (``check_columns``) against the registry and the existing table.
    """
    table = entry(table)
    if write not in table.writes:
        raise ValueError(f"{table} allows {', '.join(table.writes)} writes (runtime/lake.py), not {write}")
    path = table_path(cfg, table)
    spark = df.sparkSession
    existing = spark.read.format("delta").load(path).schema if delta_ops.is_delta_table(spark, path) else None
    check_columns(df, table, existing)
    return table, commented(df, table)


def commented(df: DataFrame, table: Table) -> DataFrame:
    """``df`` with each column's comment from the registry in its metadata, which Delta keeps in the schema."""
    columns = []
    for field in df.schema.fields:
        comment = table.comment(field.name)
        metadata = {**field.metadata, "comment": comment} if comment else field.metadata
        columns.append(F.col(f"`{field.name}`").alias(field.name, metadata=metadata))
    return df.select(*columns)


def _create_if_new(df: DataFrame, cfg: Config, table: Table) -> CommitMetrics | None:
    """Create the table with ``df``'s rows if it does not exist (that commit's metrics), else name it (None).

    A new table is made as its entry declares: partition columns, change data feed, the columns' comments
    (in ``df``'s schema), then its description as the table's COMMENT (a second, metadata-only commit:
    Delta's writer takes no description, and a table-creating write through the catalog, which would,
    loses the DataFrame's Observations), then its name in the metastore.
    """
    spark, path = df.sparkSession, table_path(cfg, table)
    if delta_ops.is_delta_table(spark, path):
        catalog.register(spark, cfg, table, path)
        return None
    writer = df.write.format("delta").mode("error")  # "errorifexists" is not a Spark Connect mode
    if table.partition_by:
        writer = writer.partitionBy(*table.partition_by)
    if table.change_data_feed:
        writer = writer.option("delta.enableChangeDataFeed", "true")
    writer.save(path)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('comment' = {catalog.quote(table.description)})")
    catalog.register(spark, cfg, table, path)
    return CommitMetrics(spark, path, at=0)


class CommitMetrics(Mapping[str, int]):
    """The ``operationMetrics`` Delta recorded with a table's latest commit, as ints, read when first looked at.

    Every write here returns one, so what it wrote is known without a second pass over the data:
    numOutputRows (numCopiedRows of them copied from files it rewrote) for a write; numSourceRows,
    numTargetRowsInserted, numTargetRowsUpdated, numTargetRowsDeleted, numTargetRowsCopied... for a
    MERGE. Reading them costs one small Spark job (Delta's history), spent only by a caller that
    looks: look before anything else commits to the same table. With ``since`` (the version before
    the write), a write that committed nothing (a MERGE with nothing new) has no metrics at all;
    with ``at``, the metrics are those of that version (a table's creating write, 0).
    """

    def __init__(self, spark: SparkSession, path: str, since: int | None = None, at: int | None = None) -> None:
        self._spark, self._path, self._since, self._at = spark, path, since, at
        self._metrics: dict[str, int] | None = None

    def _load(self) -> dict[str, int]:
        if self._metrics is None:
            if self._at is None:
                row = next(iter(delta_ops.history(self._spark, self._path, 1)), None)
            else:
                row = next((r for r in delta_ops.history(self._spark, self._path) if r["version"] == self._at), None)
            committed = row is not None and (self._since is None or row["version"] > self._since)
            found = (row["operationMetrics"] if committed else None) or {}
            self._metrics = {k: int(v) for k, v in found.items() if v is not None and v.lstrip("-").isdigit()}
        return self._metrics

    @property
    def committed(self) -> bool:
        """Whether the write committed a new version (False: nothing to change)."""
        return bool(self._load())

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
    """Replace the table's rows with ``df``'s; returns the commit's metrics (numOutputRows: rows written)."""
    faults.point("delta", str(table))
    table, df = _allow(table, OVERWRITE, df, cfg)
    if created := _create_if_new(df, cfg, table):
        return created
    path = table_path(cfg, table)
    _evolving(df.write.format("delta").mode("overwrite"), table).save(path)
    return CommitMetrics(df.sparkSession, path)


def replace_where(df: DataFrame, cfg: Config, table: TableRef, condition: str) -> CommitMetrics:
    """Atomically replace the rows matching ``condition`` (for example one as_of) with ``df``.

    A new table is partitioned by the entry's ``partition_by``. Returns the commit's metrics:
    numOutputRows counts the rows written, numCopiedRows of them kept from files it rewrote
    (``rows_written`` subtracts them), numDeletedRows the rows it replaced.
    """
    faults.point("delta", str(table))
    table, df = _allow(table, REPLACE, df, cfg)
    if created := _create_if_new(df, cfg, table):
        return created
    path = table_path(cfg, table)
    writer = _evolving(df.write.format("delta").mode("overwrite"), table)
    writer.option("replaceWhere", condition).save(path)
    return CommitMetrics(df.sparkSession, path)


def append(df: DataFrame, cfg: Config, table: TableRef) -> CommitMetrics:
    """Append ``df`` to the table; returns the commit's metrics (numOutputRows: rows written)."""
    faults.point("delta", str(table))
    table, df = _allow(table, APPEND, df, cfg)
    if created := _create_if_new(df, cfg, table):
        return created
    path = table_path(cfg, table)
    _evolving(df.write.format("delta").mode("append"), table).save(path)
    return CommitMetrics(df.sparkSession, path)


def merge(df: DataFrame, cfg: Config, table: TableRef, within: dict[str, object] | None = None) -> CommitMetrics:
    """Upsert ``df`` into the table on the entry's keys; creates the table on first write.

    ``within`` (column -> value, e.g. the as_of of a snapshot) confines the MERGE to the target rows
    with those values, so Delta reads only their partition. A matched row is rewritten only when one
    of its values changed, so a rerun of the same rows changes nothing (and adds nothing to the
    change data feed); with the entry's ``newer_than`` (a column), only by a row at least as new. With
    the entry's ``removed_when_null`` (a column), a row of ``df`` with that column null deletes its key.

    Returns the commit's metrics: numTargetRowsInserted, numTargetRowsUpdated, numTargetRowsDeleted,
    numTargetRowsCopied, numSourceRows (rows new or changed)... for a MERGE; numOutputRows when this
    write created the table; none when nothing was new (no commit).
    """
    faults.point("delta", str(table))
    table, df = _allow(table, MERGE, df, cfg)
    if created := _create_if_new(df, cfg, table):
        return created
    spark, path = df.sparkSession, table_path(cfg, table)
    before = delta_ops.latest_version(spark, path)
    within_sql = [f"`{column}` = {delta_ops.literal(value)}" for column, value in (within or {}).items()]
    # Rows already there as they are would only make Delta rewrite their files: leave them out.
    current = spark.read.format("delta").load(path).where(" AND ".join(within_sql) or "true").select(*df.columns)
    same = [df[c].eqNullSafe(current[c]) for c in df.columns]
    incoming = df.join(current, same, "left_anti") if same else df
    matched = [f"t.`{k}` <=> s.`{k}`" for k in table.keys] + [f"t.{p}" for p in within_sql]
    values = [c for c in df.columns if c not in table.keys]
    changed = "NOT (" + " AND ".join(f"t.`{c}` <=> s.`{c}`" for c in values) + ")" if values else "false"
    if table.newer_than:
        changed = f"{changed} AND s.`{table.newer_than}` >= t.`{table.newer_than}`"
    clauses = [f"WHEN MATCHED AND ({changed}) THEN UPDATE SET *", "WHEN NOT MATCHED THEN INSERT *"]
    if table.removed_when_null:
        gone = f"s.`{table.removed_when_null}` IS NULL"
        clauses = [
            f"WHEN MATCHED AND {gone} THEN DELETE",
            clauses[0],
            f"WHEN NOT MATCHED AND NOT {gone} THEN INSERT *",
        ]
    delta_ops.merge(spark, path, incoming, " AND ".join(matched), clauses)
    return CommitMetrics(spark, path, since=before)


def _evolving(writer, table: Table):  # noqa: ANN001 - pyspark's DataFrameWriter
    """``writer``, taking new columns into the table if the entry drifts (bronze: a source's new columns)."""
    return writer.option("mergeSchema", "true") if table.drifts else writer


def create(df: DataFrame, cfg: Config, table: TableRef) -> CommitMetrics:
    """Write a table's first rows (any kind of table, a type 2 one too); refuses to replace an existing one."""
    faults.point("delta", str(table))
    table = entry(table)
    check_columns(df, table)
    path = table_path(cfg, table)
    if delta_ops.is_delta_table(df.sparkSession, path):
        raise ValueError(f"{table} already exists at {path}; create writes a new table only")
    return _create_if_new(commented(df, table), cfg, table)
