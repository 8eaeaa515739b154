"""``microseg retract``: take a delivered batch back, so later runs proceed as if it had never arrived.

The batch (named, or the one that last ingested a file) loses its rows in bronze, in every silver table and in
every quarantine table, one Delta DELETE per table that holds any. ops.batches records it as ``retracted`` and
ops.ingest_log records each of its files again without a batch, so an unchanged file is not ingested again
and its content no longer counts as delivered (a fixed copy under another name is ingested). The next run
rebuilds the source's silver from the rest of its bronze once (a customer the batch updated gets its earlier
record back) and recomputes gold for its as_of. Each table's deleted rows go to ops.run_log (stage
``retract``). Anything staged and not yet published is removed: the next clean stages it anew. It holds the
lake-wide run lock (``run_lock.acquire_lake``): it does not start while a run is in progress, nor a run while it
works.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from microseg.clean import staging
from microseg.ingest.mapping import load_mapping
from microseg.runtime import delta_ops, lake, run_lock, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError
from microseg.runtime.runlog import Entry, RunContext, StageReport, log_stage

log = logging.getLogger(__name__)


def ingested(spark: SparkSession, cfg: Config, source: str) -> list[Row]:
    """Every ops.ingest_log row of ``source`` (none before the first ingest)."""
    if not tables.exists(spark, cfg, lake.INGEST_LOG):
        return []
    return tables.read(spark, cfg, lake.INGEST_LOG).where(F.col("source") == source).collect()


def batch_of_file(logged: list[Row], source: str, file: str) -> str:
    """The batch that last ingested ``file`` of ``source``: its path as ``logged`` holds it, else its file name.

    Raises:
        ConfigError: if no file or several match, or the file has no rows (a duplicate, or retracted already).
    """
    matching = {r["path"] for r in logged if r["path"] == file} or {
        r["path"] for r in logged if posixpath.basename(r["path"]) == posixpath.basename(file)
    }
    if len(matching) != 1:
        found = "no file" if not matching else f"{len(matching)} files ({', '.join(sorted(matching))})"
        raise ConfigError(
            f"retract: source {source} has {found} named {file!r} in ops.ingest_log; give its full path as "
            f"ops.ingest_log records it, or the batch with --batch"
        )
    path = matching.pop()
    latest = max((r for r in logged if r["path"] == path), key=lambda r: r["ingested_at"])
    if latest["batch_id"] is None:
        what = f"a duplicate of {latest['duplicate_of']}" if latest["duplicate_of"] else "retracted already"
        raise ConfigError(f"retract: {path} of source {source} has no rows to take back: it was {what}")
    return latest["batch_id"]


def retract(
    spark: SparkSession, cfg: Config, source: str, batch: str | None = None, file: str | None = None
) -> StageReport:
    """Remove one batch of ``source`` (``batch``, or the one of ``file``) from bronze, silver and quarantine.

    Raises:
        ConfigError: for an unknown source, a batch the source never had, or a file that names no batch.
    """
    specs = load_mapping(cfg)
    if source not in specs:
        raise ConfigError(f"retract: no source {source!r} in mapping {cfg.sources.mapping}; sources: {sorted(specs)}")
    logged = ingested(spark, cfg, source)
    batch = batch or batch_of_file(logged, source, file or "")
    files = sorted({(r["path"], r["size"], r["modified_ms"]) for r in logged if r["batch_id"] == batch})
    if not files:
        raise ConfigError(f"retract: source {source} has no batch {batch} in ops.ingest_log; see the batch_id column")
    run = RunContext(as_of=dt.date.today())
    lock = run_lock.acquire_lake(spark, cfg, run.run_id, "retract")
    try:
        return _retract(spark, cfg, source, batch, files, run)
    finally:
        run_lock.release(spark, cfg, lock)


def _retract(
    spark: SparkSession, cfg: Config, source: str, batch: str, files: list[tuple[str, int, int]], run: RunContext
) -> StageReport:
    report = StageReport("retract", info={"source": source, "batch_id": batch, "files": [f[0] for f in files]})
    staging.clear(cfg)  # a staged batch may hold rows of it; the next clean stages again
    condition = f"_batch_id = {delta_ops.literal(batch)}"
    for table in _holding(spark, cfg, source):
        rows = tables.read(spark, cfg, table).where(condition).count()
        if rows:
            tables.delete(spark, cfg, table, condition)
            report.entries.append(Entry(table.name, rows_in=rows, rows_written=0, details={"batch_id": batch}))
            log.info("retract: %s rows of batch %s deleted from %s", rows, batch, table)
    staging.record(spark, cfg, [(source, batch, staging.RETRACTED, "retract", 0, 0, 0, run.run_id, "microseg retract")])
    now = run.started_at
    forgotten = [(source, path, size, modified, 0, None, now, None, None) for path, size, modified in files]
    tables.append(spark.createDataFrame(forgotten, lake.INGEST_LOG.ddl), cfg, lake.INGEST_LOG)
    log_stage(spark, cfg, run, report)
    return report


def _holding(spark: SparkSession, cfg: Config, source: str) -> list[lake.Table]:
    """The tables that can hold the source's rows by batch: its bronze and quarantine, every silver table and the
    quarantine of each (quality's rules). Batch ids name their source, so no other source's rows match."""
    silver = [t for t in lake.TABLES if t.name.startswith("silver.") and "_batch_id" in t.ddl]
    candidates = [lake.bronze(source), lake.quarantine(source), *silver]
    candidates += [lake.quarantine(t.name.split(".", 1)[1]) for t in silver]
    return [t for t in candidates if tables.exists(spark, cfg, t)]
