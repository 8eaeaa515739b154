"""``microseg migrate``: bring an existing lake's tables to the registry, as one explicit, recorded step.

Normal runs never change a table's schema (``runtime.tables`` refuses a column the table lacks). When
the registry (libs/microseg/runtime/lake.py) or the feature catalog adds a column, or a table gains
partitioning, a change feed or comments, ``microseg migrate`` makes the change on each table in place,
keeping its rows and its Delta history, names every table in the metastore, and appends one row per
table it changed to ops.run_log (stage ``migrate``, what changed in ``details``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql.types import StructField

from microseg.features.catalog import load_catalog
from microseg.features.stage import feature_schema
from microseg.outputs.profiles import profile_schema
from microseg.runtime import catalog, delta_ops, lake, tables
from microseg.runtime.config import Config
from microseg.runtime.lake import Table
from microseg.runtime.runlog import Entry, RunContext, StageReport, log_stage

log = logging.getLogger(__name__)


@dataclass
class Change:
    """What migrating one table changes (or, in a dry run, would change)."""

    table: Table
    add_columns: list[StructField] = field(default_factory=list)
    partition_by: tuple[str, ...] = ()  # rewrite the table partitioned by these
    change_data_feed: bool = False  # turn the change data feed on
    description: str | None = None  # set the table's COMMENT
    column_comments: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.add_columns or self.partition_by or self.change_data_feed or self.description or self.column_comments
        )

    def summary(self) -> dict:
        return {
            "add_columns": [f"{f.name} {f.dataType.simpleString()}" for f in self.add_columns],
            "partition_by": list(self.partition_by),
            "change_data_feed": self.change_data_feed,
            "description": self.description is not None,
            "column_comments": sorted(self.column_comments),
        }


def expected_columns(spark: SparkSession, cfg: Config, table: Table) -> list[StructField]:
    """The columns ``table`` should have: the registry's, and those the feature catalog adds at run time."""
    if table is lake.CUSTOMER_FEATURES:
        return list(feature_schema(spark, cfg).fields)
    if table is lake.SEGMENT_PROFILES:
        return list(profile_schema(load_catalog(cfg).names).fields)
    return list(spark.createDataFrame([], table.ddl).schema.fields)


def plan(spark: SparkSession, cfg: Config, table: Table) -> Change:
    """What ``table`` (which exists) lacks of what its entry and the catalog declare."""
    path = tables.table_path(cfg, table)
    detail = delta_ops.detail(spark, path)
    schema = spark.read.format("delta").load(path).schema
    present = {f.name: f for f in schema.fields}
    change = Change(table)
    if not table.drifts:
        change.add_columns = [f for f in expected_columns(spark, cfg, table) if f.name not in present]
    if tuple(detail["partitionColumns"]) != table.partition_by and table.partition_by:
        change.partition_by = table.partition_by
    if table.change_data_feed and detail["properties"].get("delta.enableChangeDataFeed") != "true":
        change.change_data_feed = True
    if (detail["description"] or "") != table.description:
        change.description = table.description
    for name, column in present.items():
        comment = _comment(table, column)
        if comment and column.metadata.get("comment") != comment:
            change.column_comments[name] = comment
    return change


def apply(spark: SparkSession, cfg: Config, change: Change) -> None:
    """Make ``change`` on its table: each step one Delta commit, rows and history kept."""
    table, path = change.table, tables.table_path(cfg, change.table)
    target = f"delta.`{path}`"
    if change.partition_by:
        # Partitioning cannot change in place: the table's rows are rewritten, partitioned, as a new version.
        rows = spark.read.format("delta").load(path)
        writer = rows.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.partitionBy(*change.partition_by).save(path)
    if change.add_columns:
        added = ", ".join(
            f"`{f.name}` {f.dataType.simpleString()} COMMENT {catalog.quote(table.comment(f.name))}"
            for f in change.add_columns
        )
        spark.sql(f"ALTER TABLE {target} ADD COLUMNS ({added})")
    properties = {}
    if change.change_data_feed:
        properties["delta.enableChangeDataFeed"] = "true"
    if change.description is not None:
        properties["comment"] = change.description
    if properties:
        pairs = ", ".join(f"{catalog.quote(k)} = {catalog.quote(v)}" for k, v in properties.items())
        spark.sql(f"ALTER TABLE {target} SET TBLPROPERTIES ({pairs})")
    for column, comment in change.column_comments.items():
        spark.sql(f"ALTER TABLE {target} ALTER COLUMN `{column}` COMMENT {catalog.quote(comment)}")


def _comment(table: Table, column: StructField) -> str:
    return table.comment(column.name) or column.metadata.get("comment", "")


def migrate(spark: SparkSession, cfg: Config, dry_run: bool = False) -> StageReport:
    """Migrate every table of the lake; with ``dry_run``, only report what would change.

    Returns the report logged to ops.run_log: one entry per table changed or newly named, with its
    rows before and after (equal: nothing is lost) and its Delta versions before and after.
    """
    started = dt.datetime.now()
    report = StageReport("migrate")
    for table in tables.existing(spark, cfg):
        change = plan(spark, cfg, table)
        path = tables.table_path(cfg, table)
        named = False
        details = change.summary() if change else {}
        if change and not dry_run:
            before = (tables.version(spark, cfg, table), tables.read(spark, cfg, table).count())
            apply(spark, cfg, change)
            after = (tables.version(spark, cfg, table), tables.read(spark, cfg, table).count())
            details |= {"version_before": before[0], "version_after": after[0], "rows": [before[1], after[1]]}
            log.info("migrated %s: %s", table, change.summary())
        if not dry_run:
            named = catalog.register(spark, cfg, table, path)
        if change or named:
            details["named"] = catalog.sql_name(cfg, table) if named else None
            rows = details.get("rows", [None, None])
            report.entries.append(Entry(table.name, rows_in=rows[0], rows_written=rows[1], details=details))
    report.seconds = (dt.datetime.now() - started).total_seconds()
    if not dry_run and report.entries:
        log_stage(spark, cfg, RunContext(as_of=dt.date.today()), report)
    return report
