"""Ingest stage: new files of every source into bronze.<source>, recorded in ops.ingest_log.

A file already in ops.ingest_log (same path, size and modification time) is skipped, so a daily
drop of new files ingests only those. A batch's id is a hash of its files: rerunning the same
batch replaces its own rows (replaceWhere on _batch_id) and writes nothing twice. A file that
changed in place is ingested again and its older rows are removed from bronze.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg import tables
from microseg.clean import check_mapping
from microseg.config import Config
from microseg.errors import SourceMissingError
from microseg.privacy import contact_records, hash_key, tokenise
from microseg.runlog import Entry, RunContext, StageReport
from microseg.sources import SourceFile, SourceSpec, list_files, load_mapping, location, read_files, read_jdbc

INGEST_LOG_SCHEMA = (
    "source STRING, path STRING, size BIGINT, modified_ms BIGINT, rows BIGINT, batch_id STRING, ingested_at TIMESTAMP"
)


def batch_id(source: str, files: list[SourceFile]) -> str:
    digest = hashlib.sha256(source.encode())
    for f in files:
        digest.update(f"{f.path}|{f.size}|{f.modified_ms}".encode())
    return f"b-{digest.hexdigest()[:16]}"


def new_files(spark: SparkSession, cfg: Config, source: str, files: list[SourceFile]) -> tuple[list, list]:
    """Split ``files`` into (new, changed in place) against ops.ingest_log."""
    if not tables.exists(spark, cfg, "ops.ingest_log"):
        return files, []
    seen = {
        r["path"]: (r["size"], r["modified_ms"])
        for r in tables.read(spark, cfg, "ops.ingest_log").where(F.col("source") == source).collect()
    }
    fresh = [f for f in files if f.path not in seen]
    changed = [f for f in files if f.path in seen and seen[f.path] != (f.size, f.modified_ms)]
    return fresh, changed


def ingest_snapshot(spark: SparkSession, cfg: Config, run: RunContext, spec: SourceSpec) -> Entry:
    """A database table has no files: each run reads a full snapshot and replaces the bronze table."""
    raw = read_jdbc(spark, spec)
    if spec.pii:
        raw = _split_identifiers(cfg, spec, raw)
    batch = f"s-{run.run_id}"
    bronze = raw.withColumns({"_ingested_at": F.lit(run.started_at).cast("timestamp"), "_batch_id": F.lit(batch)})
    tables.overwrite(bronze, cfg, f"bronze.{spec.name}")
    rows = tables.read(spark, cfg, f"bronze.{spec.name}").count()
    return Entry(spec.name, rows_in=rows, rows_written=rows, rows_quarantined=0, details={"snapshot": batch})


def ingest_source(spark: SparkSession, cfg: Config, run: RunContext, spec: SourceSpec) -> Entry:
    if spec.format == "jdbc":
        return ingest_snapshot(spark, cfg, run, spec)
    files = list_files(spark, location(cfg, spec))
    if not files:
        raise SourceMissingError(
            f"source {spec.name}: no files match {location(cfg, spec)}; check sources.root and the mapping's path"
        )
    fresh, changed = new_files(spark, cfg, spec.name, files)
    todo = fresh + changed
    details = {"files_found": len(files), "files_new": len(fresh), "files_changed": len(changed)}
    if not todo:
        return Entry(spec.name, rows_in=0, rows_written=0, rows_quarantined=0, details=details)
    batch = batch_id(spec.name, todo)
    raw, extra = read_files(spark, spec, [f.path for f in todo])
    if extra:
        details["extra_columns"] = extra
    if spec.pii:
        raw = _split_identifiers(cfg, spec, raw)
    bronze = raw.withColumns({"_ingested_at": F.lit(run.started_at).cast("timestamp"), "_batch_id": F.lit(batch)})
    name = f"bronze.{spec.name}"
    if changed and tables.exists(spark, cfg, name):
        _drop_rows_of(spark, cfg, name, bronze, batch)
    tables.replace_where(bronze, cfg, name, f"_batch_id = '{batch}'")
    counts = {
        r["_source_file"]: r["count"]
        for r in tables.read(spark, cfg, name)
        .where(F.col("_batch_id") == batch)
        .groupBy("_source_file")
        .count()
        .collect()
    }
    _log_files(spark, cfg, spec.name, todo, counts, batch, run.started_at)
    rows = sum(counts.values())
    return Entry(spec.name, rows_in=rows, rows_written=rows, rows_quarantined=0, details={**details, "batch_id": batch})


def _split_identifiers(cfg: Config, spec: SourceSpec, raw: DataFrame) -> DataFrame:
    """Send a feed's raw contact details to the restricted silver.customer_contact and return it tokenised.

    The contact table keeps the latest record per customer (MERGE on customer_id, newer updated_at wins).
    """
    key, region = hash_key(cfg), cfg.sources.default_phone_region
    if spec.entity == "customers":
        contact = contact_records(
            raw,
            spec.pii,
            spec.columns.get("customer_ref", "customer_ref"),
            spec.columns.get("updated_at", "updated_at"),
            region,
        )
        tables.merge(contact, cfg, "silver.customer_contact", keys=["customer_id"], newer_than="updated_at")
    return tokenise(raw, spec.pii, key, region)


def _drop_rows_of(spark: SparkSession, cfg: Config, name: str, bronze: DataFrame, batch: str) -> None:
    """Delete older rows of files being ingested again (they changed in place)."""
    paths = [r[0] for r in bronze.select("_source_file").distinct().collect()]
    DeltaTable.forPath(spark, tables.table_path(cfg, name)).delete(
        F.col("_source_file").isin(paths) & (F.col("_batch_id") != batch)
    )


def _log_files(
    spark: SparkSession,
    cfg: Config,
    source: str,
    files: list[SourceFile],
    counts: dict[str, int],
    batch: str,
    at: dt.datetime,
) -> None:
    rows = [(source, f.path, f.size, f.modified_ms, counts.get(f.path, 0), batch, at) for f in files]
    log = spark.createDataFrame(rows, INGEST_LOG_SCHEMA)
    tables.merge(log, cfg, "ops.ingest_log", keys=["source", "path"])


def run_ingest(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    check_mapping(spark, cfg)
    report = StageReport("ingest")
    for spec in load_mapping(cfg).values():
        report.entries.append(ingest_source(spark, cfg, run, spec))
    return report
