"""Table names in a metastore: each registry table as an external Delta table over its lake path.

The lake path stays the table's home (engines without the metastore, such as delta-rs, read it there);
the metastore adds ``[<catalog>.]<schema_prefix>_<layer>.<table>`` for SQL clients, the Thrift Server
and other jobs. ``tables`` registers a table when it writes it, ``microseg migrate`` a whole lake.
"""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from microseg.runtime.config import Config
from microseg.runtime.lake import Table

log = logging.getLogger(__name__)

# (application id, SQL name, path) already registered by this process: one metastore check per table.
_registered: set[tuple[str, str, str]] = set()


def enabled(cfg: Config) -> bool:
    return cfg.tables.metastore != "none"


def sql_name(cfg: Config, table: Table) -> str:
    """The table's name in the metastore: ``[<catalog>.]<schema_prefix>_<layer>.<table>``."""
    return table.sql_name(cfg.tables.catalog, cfg.tables.schema_prefix)


def schema_name(cfg: Config, layer: str) -> str:
    catalog = f"{cfg.tables.catalog}." if cfg.tables.catalog else ""
    return f"{catalog}{cfg.tables.schema_prefix}_{layer}"


def register(spark: SparkSession, cfg: Config, table: Table, path: str) -> bool:
    """Name the Delta table at ``path`` in the metastore; True if the name was (re)made.

    Makes the table's schema (database) first. A name that points elsewhere (another lake) is dropped
    and made again here: dropping an external table's name leaves its files alone. The table's own
    metadata (description, column comments, partitioning) stays in its Delta log; the metastore only
    points at it. Nothing to do without a metastore, or when the name already points at ``path``.
    """
    if not enabled(cfg):
        return False
    name = sql_name(cfg, table)
    seen = (spark.conf.get("spark.app.id"), name, path)  # the conf, not the SparkContext: Spark Connect has none
    if seen in _registered:
        return False
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema_name(cfg, table.layer)} COMMENT {quote(_layer_comment(table))}")
    made = True
    if spark.catalog.tableExists(name):
        where = location(spark, name)
        if where is not None and _same_path(where, path):
            made = False
        else:
            log.warning("table %s pointed at %s; re-pointing it at %s", name, where, path)
            spark.sql(f"DROP TABLE {name}")
    if made:
        spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION {quote(path)}")
        log.info("registered %s at %s", name, path)
    _registered.add(seen)
    return made


def location(spark: SparkSession, name: str) -> str | None:
    """Where the metastore says ``name`` lives."""
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {name}").where("col_name = 'Location'").collect()
    return rows[0]["data_type"] if rows else None


def _same_path(a: str, b: str) -> bool:
    def plain(p: str) -> str:
        return p.removeprefix("file://").removeprefix("file:").rstrip("/")

    return plain(a) == plain(b)


def _layer_comment(table: Table) -> str:
    return f"microseg {table.layer} tables (docs/TABLES.md)"


def quote(text: str) -> str:
    """``text`` as a Spark SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
