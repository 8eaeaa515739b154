"""Delta Lake operations on a table by its path, in Delta's SQL: one code path under classic Spark and Spark Connect.

Spark Connect gap: Delta's Python ``DeltaTable`` API (isDeltaTable, forPath, history, detail, merge,
delete, update) needs the Delta Connect server plugin (io.delta:delta-connect-server), a preview not
published for Delta 4.4 (Maven Central has no such jar). The SQL statements below do the same work
through ``spark.sql``, which both kinds of session run; tables are written through ``runtime.tables``.

They cost what the ``DeltaTable`` calls cost in Spark jobs, or less: ``is_delta_table`` resolves the
path in the catalog (no job), ``history`` collects DESCRIBE HISTORY's rows (the one job the command
runs; filtered here, not by a second query), ``detail`` runs none.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Row, SparkSession

NOT_A_DELTA_TABLE = "DELTA_MISSING_DELTA_TABLE"


def identifier(path: str) -> str:
    """The SQL identifier of the Delta table at ``path``: delta.`<path>`."""
    return "delta.`" + path.replace("`", "``") + "`"


def literal(value: object) -> str:
    """A Python value as a Spark SQL literal (dates as DATE'...', strings quoted)."""
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP'{value.isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).upper()
    return repr(value)


def is_delta_table(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table lives at ``path``: resolved by Delta's catalog, without a Spark job."""
    try:
        return spark.catalog.tableExists(identifier(path))
    except AnalysisException as exc:
        if exc.getCondition() == NOT_A_DELTA_TABLE:
            return False
        raise


def history(spark: SparkSession, path: str, limit: int | None = None) -> list[Row]:
    """DESCRIBE HISTORY of the table, newest commit first (``limit`` commits, or all)."""
    bound = f" LIMIT {int(limit)}" if limit is not None else ""
    return spark.sql(f"DESCRIBE HISTORY {identifier(path)}{bound}").collect()


def latest_version(spark: SparkSession, path: str) -> int:
    """The version of the table's latest commit."""
    return history(spark, path, 1)[0]["version"]


def detail(spark: SparkSession, path: str) -> Row:
    """DESCRIBE DETAIL of the table: format, partitionColumns, properties, description, numFiles..."""
    return spark.sql(f"DESCRIBE DETAIL {identifier(path)}").first()


def delete(spark: SparkSession, path: str, condition: str) -> None:
    """DELETE the rows matching the SQL ``condition``."""
    spark.sql(f"DELETE FROM {identifier(path)} WHERE {condition}")


def merge(spark: SparkSession, path: str, source: DataFrame, on: str, clauses: list[str]) -> None:
    """MERGE ``source`` (aliased ``s``) into the table (aliased ``t``) ``on`` a condition, with WHEN ``clauses``.

    For example ``["WHEN MATCHED AND NOT (t.v <=> s.v) THEN UPDATE SET *", "WHEN NOT MATCHED THEN INSERT *"]``.
    The source is a temporary view for the statement's time (an Observation on it is not reported
    under Spark Connect).
    """
    with temp_view(source) as view:
        spark.sql(f"MERGE INTO {identifier(path)} AS t USING {view} AS s ON {on} " + " ".join(clauses))


@contextmanager
def temp_view(df: DataFrame) -> Iterator[str]:
    """``df`` as a temporary view of a unique name, dropped when the block ends."""
    name = f"microseg_{uuid.uuid4().hex}"
    df.createOrReplaceTempView(name)
    try:
        yield name
    finally:
        df.sparkSession.catalog.dropTempView(name)
