"""Ingest stage: new files of every source into bronze.<source>, recorded in ops.ingest_log.

A file already in ops.ingest_log (same path, size and modification time) is skipped, so a daily
drop of new files ingests only those. A new file whose bytes equal an ingested file's (its SHA-256)
is the same delivery again under another name: it is skipped and logged as a duplicate of the first,
with 0 rows. A batch's id is a hash of its files: rerunning the same batch replaces its own rows
(replaceWhere on _batch_id) and writes nothing twice. A file that changed in place is ingested again
and its older rows are removed from bronze.

ops.ingest_log is appended to once per run, after bronze: one row per file and ingestion (a file that
changed in place has a row per version; the latest is the one compared). Rows are counted as they are
written (a Spark Observation, per file) and reconciled with the rows the Delta commit reports. Sources
are ingested side by side (``run.parallel_sources``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable

from pyspark.sql import DataFrame, Observation, Row, SparkSession
from pyspark.sql import functions as F

from microseg.ingest.mapping import SourceSpec, check_mapping, load_mapping
from microseg.ingest.privacy import contact_records, tokenise
from microseg.ingest.readers import check_files, location, read_files, read_jdbc
from microseg.ingest.standardise import with_nfkc
from microseg.quality.rules import undecodable_columns
from microseg.runtime import delta_ops, lake, storage, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import (
    ReconciliationError,
    SourceMissingError,
    TableSchemaError,
    UndecodableTextError,
)
from microseg.runtime.keys import hash_key
from microseg.runtime.lake import Table
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import described, outcomes, raise_first
from microseg.runtime.storage import FileInfo

log = logging.getLogger(__name__)

Seen = dict[str, tuple[int, int]]  # path -> (size, modified_ms) of its latest ingestion
Hashes = dict[str, str]  # content hash -> the first file ingested with it
Ingested = tuple[Entry, list[tuple]]  # a source's entry, and its files' rows for ops.ingest_log
MAX_UNDECODABLE_SHARE = 0.01  # of a file's rows: more fails the batch (the file's encoding is not the mapping's)
OBSERVED_FILES = 100  # a batch of up to this many files is counted per file in the pass that writes it


def batch_id(source: str, files: list[FileInfo]) -> str:
    """``b-<latest modification, UTC>-<hash of the files>``: the same files give the same id, and a later
    drop sorts after earlier ones, so Delta's file statistics skip older files when a batch is replaced."""
    digest = hashlib.sha256(source.encode())
    for f in files:
        digest.update(f"{f.path}|{f.size}|{f.modified_ms}".encode())
    latest = dt.datetime.fromtimestamp(max(f.modified_ms for f in files) / 1000, dt.UTC)
    return f"b-{latest:%Y%m%dT%H%M%S}-{digest.hexdigest()[:16]}"


def ingested_files(spark: SparkSession, cfg: Config) -> tuple[dict[str, Seen], dict[str, Hashes]]:
    """source -> the files ops.ingest_log holds for it (the latest row of each), and source -> the content hashes
    of the files whose rows it holds (a retracted file's latest row has no hash); read once for all sources."""
    if not tables.exists(spark, cfg, lake.INGEST_LOG):
        return {}, {}
    logged = tables.read(spark, cfg, lake.INGEST_LOG)
    if "content_hash" not in logged.columns:
        raise TableSchemaError(
            f"{lake.INGEST_LOG} has no content_hash column yet (this version records each file's SHA-256 to skip "
            f"re-delivered files): run microseg migrate once on this lake, which adds it and keeps every row"
        )
    rows = logged.select(
        "source", "path", "size", "modified_ms", "ingested_at", "content_hash", "duplicate_of"
    ).collect()
    seen: dict[str, Seen] = {}
    latest: dict[tuple[str, str], Row] = {}
    for r in sorted(rows, key=lambda r: r["ingested_at"]):
        seen.setdefault(r["source"], {})[r["path"]] = (r["size"], r["modified_ms"])
        latest[r["source"], r["path"]] = r
    hashes: dict[str, Hashes] = {}
    for (source, path), r in sorted(latest.items(), key=lambda item: item[1]["ingested_at"]):
        if r["content_hash"] and not r["duplicate_of"]:
            hashes.setdefault(source, {}).setdefault(r["content_hash"], path)
    return seen, hashes


def redelivered(cfg: Config, fresh: list[FileInfo], known: Hashes) -> tuple[dict[str, str], dict[str, str]]:
    """The content hash of each new non-empty file, and those of ``fresh`` that repeat an ingested file or an
    earlier one of ``fresh`` (path -> the first file with its bytes)."""
    hashes = {f.path: storage.content_hash(cfg, f.path) for f in fresh if f.size > 0}
    first = dict(known)
    duplicates = {}
    for path, digest in hashes.items():
        if digest in first:
            duplicates[path] = first[digest]
        else:
            first[digest] = path
    return hashes, duplicates


def new_files(seen: Seen, files: list[FileInfo]) -> tuple[list[FileInfo], list[FileInfo]]:
    """Split ``files`` into (new, changed in place) against what was ingested before."""
    fresh = [f for f in files if f.path not in seen]
    changed = [f for f in files if f.path in seen and seen[f.path] != (f.size, f.modified_ms)]
    return fresh, changed


def _write_bronze(bronze: DataFrame, cfg: Config, name: Table, batch: str, paths: list[str]) -> tuple[int, dict]:
    """Write one batch to ``name``: replace the batch's own rows, or the whole table when ``paths`` is empty.

    The rows are counted in the pass that writes them: in all, and per source file when the batch
    has at most OBSERVED_FILES files (a comparison per row and file); a larger batch, such as a
    first load, counts its rows per file afterwards from the bronze table.

    Returns:
        The rows written (as the commit reports them) and the rows of each path.

    Raises:
        ReconciliationError: if the rows read and the rows committed differ.
    """
    observation = Observation()
    observed_files = paths if len(paths) <= OBSERVED_FILES else []
    per_file = [F.count_if(F.col("_source_file") == p).alias(str(i)) for i, p in enumerate(observed_files)]
    observed = bronze.observe(observation, F.count(F.lit(1)).alias("rows"), *per_file)
    if paths:
        written = tables.replace_where(observed, cfg, name, f"_batch_id = '{batch}'").rows_written
    else:
        written = tables.overwrite(observed, cfg, name).rows_written
    read = observation.get
    if read["rows"] != written:
        raise ReconciliationError(
            f"{name} batch {batch}: {read['rows']} rows read but {written} committed; rerun the ingest stage"
        )
    if len(observed_files) == len(paths):
        return written, {p: read[str(i)] for i, p in enumerate(paths)}
    batch_rows = tables.read(bronze.sparkSession, cfg, name).where(F.col("_batch_id") == batch)
    return written, {r["_source_file"]: r["count"] for r in batch_rows.groupBy("_source_file").count().collect()}


def ingest_snapshot(spark: SparkSession, cfg: Config, run: RunContext, spec: SourceSpec) -> Ingested:
    """A database table has no files: each run reads a full snapshot and replaces the bronze table.

    The snapshot is read from the database once (a local checkpoint), so the contact table and bronze hold
    the same state of a live database.
    """
    raw = read_jdbc(spark, spec).localCheckpoint(eager=True)
    if spec.pii:
        raw = _split_identifiers(cfg, spec, raw)
    batch = f"s-{run.run_id}"
    bronze = raw.withColumns({"_ingested_at": F.lit(run.started_at).cast("timestamp"), "_batch_id": F.lit(batch)})
    rows, _ = _write_bronze(bronze, cfg, lake.bronze(spec.name), batch, [])
    return Entry(spec.name, rows_in=rows, rows_written=rows, rows_quarantined=0, details={"snapshot": batch}), []


def ingest_source(
    spark: SparkSession, cfg: Config, run: RunContext, spec: SourceSpec, seen: Seen, known: Hashes
) -> Ingested:
    """Ingest the new and changed files of one source; returns its entry and its rows for ops.ingest_log."""
    if spec.format == "jdbc":
        return ingest_snapshot(spark, cfg, run, spec)
    files = storage.list_files(cfg, location(cfg, spec))
    if not files:
        raise SourceMissingError(
            f"source {spec.name}: no files match {location(cfg, spec)}; check sources.root and the mapping's path"
        )
    fresh, changed = new_files(seen, files)
    hashes, duplicates = redelivered(cfg, fresh, known)
    details = {"files_found": len(files), "files_new": len(fresh), "files_changed": len(changed)}
    if duplicates:
        details["files_duplicate"] = duplicates
        log.warning("source %s: file(s) already ingested under another name, skipped: %s", spec.name, duplicates)
    copies = [f for f in fresh if f.path in duplicates]
    logged = _ingest_log_rows(spec.name, copies, {}, None, run.started_at, hashes, duplicates)
    todo = [f for f in fresh if f.path not in duplicates] + changed
    if not todo:
        return Entry(spec.name, rows_in=0, rows_written=0, rows_quarantined=0, details=details), logged
    batch = batch_id(spec.name, todo)
    paths = [f.path for f in todo]
    readable = [f for f in todo if f.size > 0]  # an empty file has no header to read: recorded with 0 rows
    if len(readable) < len(todo):
        details["empty_files"] = [f.path for f in todo if f.size == 0]
        log.warning("source %s: empty file(s) recorded with 0 rows: %s", spec.name, details["empty_files"])
    check_files(cfg, spec, readable)
    bronze = None
    if readable:
        raw, extra = read_files(spark, spec, [f.path for f in readable])
        if extra:
            details["extra_columns"] = extra
        if spec.captures_corrupt_records:
            check_decoding(raw, spec, cfg)
        if spec.pii:
            raw = _split_identifiers(cfg, spec, raw)
        bronze = raw.withColumns({"_ingested_at": F.lit(run.started_at).cast("timestamp"), "_batch_id": F.lit(batch)})
    name = lake.bronze(spec.name)
    if changed and tables.exists(spark, cfg, name):
        _drop_rows_of(spark, cfg, name, paths, batch)
    rows, counts = 0, {}
    if bronze is not None:
        rows, counts = _write_bronze(bronze, cfg, name, batch, [f.path for f in readable])
    logged += _ingest_log_rows(spec.name, todo, counts, batch, run.started_at, hashes)
    details["batch_id"] = batch
    return Entry(spec.name, rows_in=rows, rows_written=rows, rows_quarantined=0, details=details), logged


def check_decoding(raw: DataFrame, spec: SourceSpec, cfg: Config) -> None:
    """Fail the batch, before bronze, when more than MAX_UNDECODABLE_SHARE of a file's rows hold text that did
    not decode in the source's encoding (clean quarantines fewer as ``undecodable_text``). One Spark job.

    Raises:
        UndecodableTextError: naming each such file and the mapping's ``encoding:`` to set.
    """
    bad = undecodable_columns(raw)
    per_file = raw.groupBy("_source_file").agg(
        F.count(F.lit(1)).alias("rows"), F.count_if(bad.isNotNull()).alias("bad"), F.max(bad).alias("columns")
    )
    failed = per_file.where(F.col("bad") > F.col("rows") * MAX_UNDECODABLE_SHARE).collect()
    if not failed:
        return
    files = "\n".join(
        f"  {r['_source_file']}: {r['bad']:,} of {r['rows']:,} rows (column(s) {r['columns']}, for example)"
        for r in sorted(failed, key=lambda r: r["_source_file"])
    )
    other = "ISO-8859-1 (Latin-1) or windows-1252" if spec.encoding.upper() in ("UTF-8", "UTF8") else "their encoding"
    raise UndecodableTextError(
        f"source {spec.name}: more than {MAX_UNDECODABLE_SHARE:.0%} of the rows of {len(failed)} file(s) hold "
        f"text that does not decode as {spec.encoding} (read as U+FFFD); nothing of the batch was written:\n"
        f"{files}\nIf the files are in another encoding, set it on the source in "
        f"{cfg.conf_file('sources', cfg.sources.mapping + '.yaml')}, for example encoding: {other.split(' ')[0]} "
        f"(try {other}), then run again"
    )


def _split_identifiers(cfg: Config, spec: SourceSpec, raw: DataFrame) -> DataFrame:
    """Send a feed's raw contact details to the restricted silver.customer_contact and return it tokenised.

    Emails are NFKC-normalised first, once per distinct address (normalise_email expects it). The
    contact table keeps the latest record per customer (MERGE on customer_id, newer updated_at wins).
    """
    key, region = hash_key(cfg), cfg.sources.default_phone_region
    for column, kind in spec.pii.items():
        if kind == "email":
            raw = with_nfkc(raw, column)
    if spec.entity == "customers":
        contact = contact_records(
            raw,
            spec.pii,
            spec.columns.get("customer_ref", "customer_ref"),
            spec.columns.get("updated_at", "updated_at"),
            region,
        )
        tables.merge(contact, cfg, lake.CUSTOMER_CONTACT)
    return tokenise(raw, spec.pii, key, region)


def _drop_rows_of(spark: SparkSession, cfg: Config, table: Table, paths: list[str], batch: str) -> None:
    """Delete older rows of files being ingested again (they changed in place)."""
    files = ", ".join(delta_ops.literal(p) for p in paths)
    tables.delete(spark, cfg, table, f"_source_file IN ({files}) AND _batch_id != {delta_ops.literal(batch)}")


def log_files(spark: SparkSession, cfg: Config, rows: list[tuple]) -> None:
    """Append ``ingest_source``'s rows for ops.ingest_log (one commit; none without rows)."""
    if rows:
        tables.append(spark.createDataFrame(rows, lake.INGEST_LOG.ddl), cfg, lake.INGEST_LOG)


def _ingest_log_rows(
    source: str,
    files: list[FileInfo],
    counts: dict[str, int],
    batch: str | None,
    at: dt.datetime,
    hashes: dict[str, str],
    duplicates: dict[str, str] | None = None,
) -> list[tuple]:
    """The ingest log rows of one batch (or of skipped duplicates, ``batch`` None): each file with its size,
    modification time, rows, content hash and the file it duplicates."""
    first = duplicates or {}
    return [
        (source, f.path, f.size, f.modified_ms, counts.get(f.path, 0), batch, at, hashes.get(f.path), first.get(f.path))
        for f in files
    ]


def run_ingest(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    check_mapping(spark, cfg)
    report = StageReport("ingest")
    with described(spark, "ingest: read ops.ingest_log"):
        seen, hashes = ingested_files(spark, cfg)

    def task(spec: SourceSpec) -> Callable[[], Ingested]:
        def ingest() -> Ingested:
            with described(spark, f"ingest {spec.name}"):
                return ingest_source(spark, cfg, run, spec, seen.get(spec.name, {}), hashes.get(spec.name, {}))

        return ingest

    ingested = outcomes(spark, [task(spec) for spec in load_mapping(cfg).values()], cfg.run.parallel_sources)
    done = [outcome for outcome in ingested if not isinstance(outcome, BaseException)]
    # One commit for the files of every source that went into bronze: a file whose rows are in bronze but not
    # logged (an interrupted run) is read again next time, into the same batch, which replaces its rows.
    with described(spark, "ingest: ops.ingest_log"):
        log_files(spark, cfg, [row for _, rows in done for row in rows])
    report.entries = [entry for entry, _ in raise_first(ingested)]  # else the first failure, in the mapping's order
    return report
