"""Publication of what clean staged and the quality gate passed: one Delta commit per table, rerunnable.

A silver table takes its staged rows as its source's plan says: a rebuilt source replaces the whole
table; a merged table (customers, the identity map and conflicts) upserts its staged rows (and the identity
tables delete the keys staged with null); any other replaces the rows of the plan's
batches (``_batch_id IN (...)``), so publishing the same batches again writes the same rows once, or appends
them when none was ever staged before and no earlier publication of this staging began (``write``). Each
quarantine table takes the rows of the same batches the same way. Then ops.batches records the batches
as published and the staging is removed. An interruption anywhere before that leaves the batches
pending: the next run stages and publishes them again, to the same tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.clean import staging
from microseg.clean.staging import PUBLISHED, REBUILD, Manifest, Plan
from microseg.quality.rules import quarantine_records
from microseg.runtime import lake, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import ReconciliationError
from microseg.runtime.lake import Table
from microseg.runtime.runlog import Entry
from microseg.runtime.sparkops import cached, described, in_parallel


@dataclass(frozen=True)
class Gated:
    """A staged silver table's rows, each flagged (``_rule``, ``_reason``) if a quarantine rule takes it."""

    table: Table
    flagged: DataFrame
    columns: list[str]
    quarantines: bool  # whether a quarantine rule failed on the table (else no row is flagged)


def write(df: DataFrame, cfg: Config, table: Table, plans: list[Plan], resumed: bool) -> tables.CommitMetrics:
    """One commit of ``df`` (the rows of ``plans``) into ``table`` (see the module's description).

    Batches never staged before (``Plan.fresh``) are appended, unless this publication is ``resumed`` (an
    earlier one began and may have written them): their rows cannot be in the table, and an append spares
    the scan of the table's files a replaceWhere makes.
    """
    if any(p.mode == REBUILD for p in plans) or (lake.REPLACE not in table.writes and lake.MERGE not in table.writes):
        return tables.overwrite(df, cfg, table)
    if lake.MERGE in table.writes:
        return tables.merge(df, cfg, table)
    if not resumed and all(p.fresh for p in plans) and lake.APPEND in table.writes:
        return tables.append(df, cfg, table)
    return tables.replace_where(df, cfg, table, " OR ".join(f"({p.condition})" for p in plans))


def publish(spark: SparkSession, cfg: Config, manifest: Manifest, gated: list[Gated], run_id: str) -> list[Entry]:
    """Publish every staged table and every quarantine table, side by side (``run.parallel_sources``); returns
    one entry per silver table.

    Raises:
        ReconciliationError: if a table's staged rows != rows published + rows quarantined.
    """
    resumed = staging.begin_publication(cfg)
    quarantines: dict[str, list[tuple[DataFrame, Plan]]] = {}
    for name, source in manifest.tables.items():
        if lake.named(name).layer == "quarantine":
            rows = staging.staged(spark, cfg, lake.named(name))
            quarantines.setdefault(name, []).append((rows, manifest.plans[source]))
    for g in gated:
        if g.quarantines:  # the rows the gate moves: flagged again by the quarantine's own task
            record_columns = [c for c in g.columns if c != "_batch_id"]
            moved = quarantine_records(g.flagged, g.table.name, record_columns), manifest.plan_of(g.table)
            quarantines.setdefault(lake.quarantine(g.table.short_name).name, []).append(moved)

    def quarantine(name: str, parts: list[tuple[DataFrame, Plan]]) -> Callable[[], None]:
        def publish_quarantine() -> None:
            with described(spark, f"quality: publish {name}"):
                rows = reduce(DataFrame.unionByName, [df for df, _ in parts])
                write(rows, cfg, lake.named(name), [plan for _, plan in parts], resumed)

        return publish_quarantine

    tasks = [_publisher(spark, cfg, manifest, g, resumed) for g in gated]
    tasks += [quarantine(name, parts) for name, parts in sorted(quarantines.items())]
    entries = in_parallel(spark, tasks, cfg.run.parallel_sources)[: len(gated)]
    rows = [
        (plan.source, batch, PUBLISHED, plan.mode, None, None, None, run_id, None)
        for plan in manifest.plans.values()
        if plan.source != staging.IDENTITY
        for batch in plan.batches
    ]
    staging.record(spark, cfg, rows)
    staging.clear(cfg)
    return entries


def _publisher(spark: SparkSession, cfg: Config, manifest: Manifest, g: Gated, resumed: bool) -> Callable[[], Entry]:
    """The publication of one gated table (its rows that no quarantine rule takes); returns its entry."""

    def publish_table() -> Entry:
        plan = manifest.plan_of(g.table)
        with described(spark, f"quality: publish {g.table}"), cached(g.flagged) as flagged:
            by_rule = {r["_rule"]: r["count"] for r in flagged.groupBy("_rule").count().collect()}
            staged, kept = sum(by_rule.values()), by_rule.pop(None, 0)
            good = flagged.where(F.col("_rule").isNull()).select(*[F.col(f"`{c}`") for c in g.columns])
            committed = write(good, cfg, g.table, [plan], resumed)
            merged = lake.MERGE in g.table.writes and plan.mode != REBUILD  # unchanged rows are not written
            if not merged and committed.rows_written != kept:
                raise ReconciliationError(
                    f"{g.table}: {staged} rows staged, {kept} to publish but {committed.rows_written} committed; "
                    f"rerun the quality stage"
                )
            details = {"mode": plan.mode, "quarantined_by_rule": dict(sorted(by_rule.items()))}
            if merged:
                details["inserted"] = committed.get("numTargetRowsInserted", 0)
                details["updated"] = committed.get("numTargetRowsUpdated", 0)
                if g.table.removed_when_null:
                    details["deleted"] = committed.get("numTargetRowsDeleted", 0)
        return Entry(g.table.name, staged, kept, staged - kept, details=details)

    return publish_table
