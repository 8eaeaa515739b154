"""What a run is (id, as_of, start) and what each stage reports to ops.run_log and the summary."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from microseg.runtime import lake, tables
from microseg.runtime.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """One pipeline run: every stage of it shares the id, the snapshot date and the start time."""

    as_of: dt.date
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None))
    full_refresh: bool = False  # clean rebuilds every source's silver from all of bronze
    retrain: bool = False  # train even if the champions were trained on the same inputs (--retrain)


@dataclass
class Entry:
    """What a stage did with one source or table."""

    source: str
    rows_in: int | None = None
    rows_written: int | None = None
    rows_quarantined: int | None = None
    details: dict = field(default_factory=dict)


@dataclass
class StageReport:
    """What a stage did: one entry per source or table, facts for the summary, its time and Spark jobs."""

    stage: str
    entries: list[Entry] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    seconds: float = 0.0
    jobs: int | None = 0  # None: not counted (Spark Connect)


def log_stage(spark: SparkSession, cfg: Config, run: RunContext, report: StageReport, status: str = "ok") -> None:
    """Append one row per entry of ``report`` to ops.run_log.

    The stage's seconds and Spark jobs are facts of the whole stage, repeated on each of its rows
    (the jobs as ``spark_jobs`` in ``details``).
    """
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    entries = report.entries or [Entry(source="", details=report.info)]
    rows = [
        (
            run.run_id,
            run.as_of,
            report.stage,
            e.source,
            e.rows_in,
            e.rows_written,
            e.rows_quarantined,
            float(report.seconds),
            status,
            json.dumps({**e.details, "spark_jobs": report.jobs}, sort_keys=True, default=str),
            now,
        )
        for e in entries
    ]
    tables.append(spark.createDataFrame(rows, lake.RUN_LOG.ddl), cfg, lake.RUN_LOG)


def completed_stages(spark: SparkSession, cfg: Config, as_of: dt.date) -> dict[str, str]:
    """The stages whose latest run for ``as_of`` in ops.run_log succeeded: stage -> that run's id."""
    if not tables.exists(spark, cfg, lake.RUN_LOG):
        return {}
    log = tables.read(spark, cfg, lake.RUN_LOG).where(F.col("as_of") == F.lit(as_of))
    latest = log.groupBy("stage").agg(F.max_by(F.struct("status", "run_id"), "logged_at").alias("last")).collect()
    return {r["stage"]: r["last"]["run_id"] for r in latest if r["last"]["status"] == "ok"}


def last_ok_entry(spark: SparkSession, cfg: Config, as_of: dt.date, stage: str, source: str) -> tuple[str, dict] | None:
    """The run id and details of the latest ops.run_log row of ``stage`` and ``source`` for ``as_of`` with status
    ok; None if there is none (or no run log). One small Spark job."""
    if not tables.exists(spark, cfg, lake.RUN_LOG):
        return None
    rows = tables.read(spark, cfg, lake.RUN_LOG).where(
        (F.col("as_of") == F.lit(as_of))
        & (F.col("stage") == stage)
        & (F.col("source") == source)
        & (F.col("status") == "ok")
    )
    latest = rows.orderBy(F.col("logged_at").desc()).select("run_id", "details").first()
    return None if latest is None else (latest["run_id"], json.loads(latest["details"] or "{}"))


def unchanged_since(
    spark: SparkSession,
    cfg: Config,
    as_of: dt.date,
    entry: tuple[str, str],
    inputs: dict,
    outputs: Callable[[dict], object],
) -> tuple[str, dict] | None:
    """The last successful run of a stage for ``as_of`` (its id and its ops.run_log details), if nothing
    changed since: the ``fingerprint`` in its details has these ``inputs``, and its ``outputs`` are still
    those it wrote (``outputs(details)``, called only when the inputs match). None: the stage has work to do.

    ``entry`` is (stage, source) of the run-log row that holds the fingerprint.
    """
    stage = entry[0]
    last = last_ok_entry(spark, cfg, as_of, *entry)
    if last is None:
        log.info("%s: computing as_of %s: no successful run of it recorded", stage, as_of)
        return None
    recorded = last[1].get("fingerprint") or {}
    changed = difference(recorded.get("inputs"), inputs, "inputs")
    if changed is None:
        changed = difference(recorded.get("outputs"), outputs(last[1]), "what it wrote")
    if changed is not None:
        since = last[1].get("computed_by_run", last[0])  # the run that computed what a skipped one relied on
        log.info("%s: computing as_of %s: since run %s, %s", stage, as_of, since, changed)
        return None
    return last


def difference(before: object, now: object, name: str) -> str | None:
    """The first difference between two fingerprints (nested dicts), as ``<name>.<key>: <before> -> <now>``;
    None when they are equal."""
    if before == now:
        return None
    if isinstance(before, dict) and isinstance(now, dict):
        for key in sorted(set(before) | set(now)):
            found = difference(before.get(key), now.get(key), f"{name}.{key}")
            if found is not None:
                return found
    return f"{name}: {before} -> {now}"
