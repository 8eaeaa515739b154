"""Batches between clean and the quality gate: what each source still has to publish, where clean stages it,
and ops.batches, the record of every batch's state.

Clean stages each source's new bronze batches as the rows it would publish (``staging.<layer>_<table>``);
quality validates them and only then publishes them to silver (quality/publish.py). The manifest
(``<lake.root>/staging/_manifest.json``) names what the last clean run staged; clean writes it last and
quality removes the staging folder last, so an interruption leaves either nothing staged or a complete
staging that the next clean replaces.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from microseg.ingest.mapping import SourceSpec
from microseg.runtime import delta_ops, faults, lake, storage, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import TableMissingError
from microseg.runtime.lake import Table

INCREMENTAL, REBUILD = "incremental", "rebuild"  # a source's new batches added to silver, or its silver rebuilt
STAGED, PUBLISHED, FAILED, RETRACTED = "staged", "published", "failed", "retracted"
IDENTITY = "identity"  # the pseudo-source of the identity map: staged whenever customers or web events change


@dataclass
class Plan:
    """What clean does with one source: the batches it stages, and whether they are added or rebuild its silver."""

    source: str
    batches: list[str]
    mode: str
    # No batch of the plan was ever staged before (ops.batches has no row of any), so none of its rows can be in a
    # table yet: publishing may append them instead of replacing their batches (quality.publish).
    fresh: bool = False

    @property
    def condition(self) -> str:
        """SQL selecting the plan's rows of a table that has ``_batch_id``."""
        return f"_batch_id IN ({', '.join(delta_ops.literal(b) for b in self.batches)})" if self.batches else "false"


@dataclass
class BatchCounts:
    """One batch of a source as clean staged it: its rows in bronze, and those quarantined, by rule."""

    rows: int
    quarantined: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    """What one clean run staged: the plan of each source, the source that fed each staged table, and the rows of
    each batch (as in ops.batches) with those clean quarantined by rule, for the quality gate's rejected share."""

    run_id: str
    plans: dict[str, Plan] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)  # staged table (silver or quarantine name) -> source
    batches: dict[str, dict[str, BatchCounts]] = field(default_factory=dict)  # source -> batch -> its counts

    def plan_of(self, table: Table) -> Plan | None:
        source = self.tables.get(table.name)
        return self.plans[source] if source else None

    def to_json(self) -> str:
        plans = [asdict(p) for p in self.plans.values()]
        batches = {s: {b: asdict(c) for b, c in counts.items()} for s, counts in self.batches.items()}
        return json.dumps({"run_id": self.run_id, "plans": plans, "tables": self.tables, "batches": batches})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        plans = {p["source"]: Plan(**p) for p in data["plans"]}
        batches = {s: {b: BatchCounts(**c) for b, c in v.items()} for s, v in data.get("batches", {}).items()}
        return cls(data["run_id"], plans, data["tables"], batches)


def _root(cfg: Config) -> str:
    return f"{cfg.lake_root}/staging"


def begin_publication(cfg: Config) -> bool:
    """Mark the staging as being published; returns whether a publication of it began before (and may have
    committed some tables: then no plan is ``fresh`` any more)."""
    marker = f"{_root(cfg)}/_publishing"
    began = storage.read_text(cfg, marker) is not None
    storage.write_text(cfg, marker, "")
    return began


def clear(cfg: Config) -> None:
    """Remove everything staged (before a clean run stages anew, after quality published it)."""
    storage.remove(cfg, _root(cfg))


def write_manifest(cfg: Config, manifest: Manifest) -> None:
    storage.write_text(cfg, f"{_root(cfg)}/_manifest.json", manifest.to_json())


def read_manifest(cfg: Config) -> Manifest | None:
    """What the last clean run staged and quality has not published yet; None if nothing."""
    text = storage.read_text(cfg, f"{_root(cfg)}/_manifest.json")
    return Manifest.from_json(text) if text else None


_SCHEMA = "_schema.json"  # beside a staged table's Parquet files: its schema, written after them


def stage(df: DataFrame, cfg: Config, table: Table, manifest: Manifest, source: str, append: bool = False) -> None:
    """Write ``df`` as the staged rows of ``table`` (fed by ``source``); ``append``: beside those staged already.

    Plain Parquet, not Delta: the staging lives only from clean to the quality gate, which reads each staged
    table a few times, and a Delta table new at every run costs Spark jobs to build its snapshot at each first
    read. The schema file goes first and comes back last: ``staged`` takes it as the mark that the rows are
    complete, and reads them without inferring a schema from the files.
    """
    manifest.tables[table.name] = source
    target = lake.staging(table)
    faults.point("staging", str(target))
    tables.check_columns(df, target)
    path = tables.table_path(cfg, target)
    storage.remove(cfg, f"{path}/{_SCHEMA}")
    df.write.mode("append" if append else "overwrite").parquet(path)
    storage.write_text(cfg, f"{path}/{_SCHEMA}", df.schema.json())


def staged(spark: SparkSession, cfg: Config, table: Table) -> DataFrame:
    """The rows ``stage`` staged for ``table``.

    Raises:
        TableMissingError: nothing (complete) is staged for it.
    """
    path = tables.table_path(cfg, lake.staging(table))
    schema = storage.read_text(cfg, f"{path}/{_SCHEMA}")
    if schema is None:
        raise TableMissingError(f"nothing is staged for {table} at {path}; run the clean stage first")
    return spark.read.schema(StructType.fromJson(json.loads(schema))).parquet(path)


def current(spark: SparkSession, cfg: Config, table: Table, manifest: Manifest) -> DataFrame | None:
    """``table`` as it will be once what ``manifest`` staged is published (None: neither exists).

    A rebuilt table is its staged rows; a merged one (customers, the identity map) its rows not staged again
    plus the staged (less those that remove their key); any other its rows of other batches plus the staged.
    """
    plan = manifest.plan_of(table)
    existing = tables.read(spark, cfg, table) if tables.exists(spark, cfg, table) else None
    if plan is None:
        return existing
    new = staged(spark, cfg, table)
    if existing is None or plan.mode == REBUILD:
        return new
    if lake.MERGE in table.writes:
        kept = existing.join(new.select(*table.keys), list(table.keys), "left_anti")
        if table.removed_when_null:
            new = new.where(F.col(table.removed_when_null).isNotNull())
        return kept.unionByName(new)
    return existing.where(f"NOT ({plan.condition})").unionByName(new)


@dataclass
class Settled:
    """The batches with nothing left to stage, from ops.batches: those published and those retracted."""

    published: dict[str, set[str]] = field(default_factory=dict)  # source -> batches
    retracted: dict[str, set[str]] = field(default_factory=dict)  # source -> batches (microseg retract)
    rebuild: set[str] = field(default_factory=set)  # sources with a batch retracted since their last publication
    recorded: dict[str, set[str]] = field(default_factory=dict)  # source -> every batch with a row, in any state

    def done(self, source: str) -> set[str]:
        return self.published.get(source, set()) | self.retracted.get(source, set())


def settled(spark: SparkSession, cfg: Config) -> Settled:
    """Every batch whose latest state in ops.batches is published or retracted, and every batch it records."""
    found = Settled()
    if not tables.exists(spark, cfg, lake.BATCHES):
        return found
    latest = (
        tables.read(spark, cfg, lake.BATCHES)
        .groupBy("source", "batch_id")
        .agg(F.max_by("status", "logged_at").alias("status"), F.max("logged_at").alias("at"))
        .collect()
    )
    last: dict[tuple[str, str], dt.datetime] = {}  # (source, status) -> when a batch last took it
    for row in latest:
        found.recorded.setdefault(row["source"], set()).add(row["batch_id"])
        if row["status"] not in (PUBLISHED, RETRACTED):
            continue
        kind = found.published if row["status"] == PUBLISHED else found.retracted
        kind.setdefault(row["source"], set()).add(row["batch_id"])
        key = (row["source"], row["status"])
        last[key] = max(last.get(key, row["at"]), row["at"])
    for source in found.retracted:
        published_at = last.get((source, PUBLISHED))
        if published_at is None or last[source, RETRACTED] > published_at:
            found.rebuild.add(source)
    return found


def plans(spark: SparkSession, cfg: Config, specs: list[SourceSpec], full_refresh: bool) -> dict[str, Plan]:
    """The plan of every source with something to stage: its bronze batches not yet published.

    A file source's batches are those ops.ingest_log records (no scan of bronze); a database snapshot's, the
    one in bronze. A source is rebuilt from all of its bronze with ``full_refresh``, when it is a database
    snapshot (each run's snapshot replaces the last), when a file of a published batch was ingested
    again (it changed in place, and ingest removed its older rows from bronze), and once after a batch of it
    was retracted (its rows are gone from bronze; a customer it updated gets its earlier record back).
    """
    present = [s for s in specs if tables.exists(spark, cfg, lake.bronze(s.name))]
    files: dict[tuple[str, str], set[str]] = {}  # (source, path) -> the batches that ingested it
    rows: dict[tuple[str, str], int] = {}  # (source, batch) -> the rows ingest read
    if tables.exists(spark, cfg, lake.INGEST_LOG):
        logged = tables.read(spark, cfg, lake.INGEST_LOG).where(F.col("batch_id").isNotNull())  # not duplicates
        for row in logged.select("source", "path", "batch_id", "rows").collect():
            files.setdefault((row["source"], row["path"]), set()).add(row["batch_id"])
            rows[row["source"], row["batch_id"]] = rows.get((row["source"], row["batch_id"]), 0) + (row["rows"] or 0)
    in_bronze: dict[str, set[str]] = {}
    for (source, _), batches in files.items():
        in_bronze.setdefault(source, set()).update(batches)
    for spec in present:
        if spec.format == "jdbc":
            rows = tables.read(spark, cfg, lake.bronze(spec.name)).select("_batch_id").distinct().collect()
            in_bronze[spec.name] = {r[0] for r in rows}
    known = settled(spark, cfg)
    result = {}
    for spec in present:
        batches = in_bronze.get(spec.name, set()) - known.retracted.get(spec.name, set())
        published_here = known.done(spec.name)
        pending = batches - published_here
        if not pending and not full_refresh and spec.name not in known.rebuild:
            continue
        refiled = any(b & pending and b & published_here for (s, _), b in files.items() if s == spec.name)
        rebuild = full_refresh or spec.format == "jdbc" or refiled or spec.name in known.rebuild
        if not rebuild:  # a batch of empty files has no rows to stage
            pending = {b for b in pending if rows.get((spec.name, b), 1) > 0}
            if not pending:
                continue
        mode = REBUILD if rebuild else INCREMENTAL
        fresh = not rebuild and not pending & known.recorded.get(spec.name, set())
        result[spec.name] = Plan(spec.name, sorted(batches if rebuild else pending), mode, fresh)
    return result


def record(spark: SparkSession, cfg: Config, rows: list[tuple]) -> None:
    """Append (source, batch_id, status, mode, rows_in, rows_written, rows_quarantined, run_id, reason) rows."""
    if rows:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        frame = spark.createDataFrame([(*r, now) for r in rows], lake.BATCHES.ddl)
        tables.append(frame, cfg, lake.BATCHES)
