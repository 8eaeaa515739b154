"""Runs stages in order for one as_of, each in its Spark job group, timed and logged to ops.run_log."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from microseg.runtime import faults, logs, run_lock, sparkops
from microseg.runtime.config import Config
from microseg.runtime.runlog import Entry, RunContext, StageReport, log_stage

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    run: RunContext
    reports: list[StageReport] = field(default_factory=list)

    def report(self, stage: str) -> StageReport | None:
        return next((r for r in self.reports if r.stage == stage), None)


StageFunction = Callable[[SparkSession, Config, RunContext], StageReport]


def snapshot_date(cfg: Config, as_of: dt.date | None = None) -> dt.date:
    """The run's as_of: the one given, else ``run.as_of``, else yesterday in UTC (the last complete day)."""
    if as_of or cfg.run.as_of:
        return as_of or cfg.run.as_of
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    log.info("as_of %s: yesterday in UTC, the last complete day (--as-of or run.as_of to choose)", yesterday)
    return yesterday


def run_stages(
    spark: SparkSession,
    cfg: Config,
    stages: list[tuple[str, StageFunction]],
    as_of: dt.date | None = None,
    progress: Callable[[str], None] | None = None,
    full_refresh: bool = False,
    retrain: bool = False,
) -> PipelineResult:
    """Run the (name, function) ``stages`` in order for ``as_of`` (default: ``snapshot_date``); ``full_refresh``
    (clean rebuilds silver from all of bronze) and ``retrain`` (train even if nothing changed) go to the
    stages in their RunContext.

    One run per as_of at a time: the run takes the as_of's lock in ops.run_locks first
    (``run_lock.acquire``: another live run of it stops this one with ``RunInProgressError``),
    renews its lease at a later stage's start when half of it has gone (``run_lock.keep``), and releases it
    at the end, failed or not.
    Each stage runs in its own Spark job group (``sparkops.group_id``), is timed, and is
    appended to ops.run_log, also when it fails (status ``failed`` with the error), and the
    error is raised again. Progress goes to this module's logger (``microseg.runtime.runner``), one line per
    stage start and end, with the stage's name on the record; a ``progress`` callable gets
    the same lines instead (``lambda _: None`` silences them).
    """
    say = progress or log.info
    run = RunContext(as_of=snapshot_date(cfg, as_of), full_refresh=full_refresh, retrain=retrain)
    names = [name for name, _ in stages]
    say(f"microseg run {run.run_id}: as_of {run.as_of}, stages {', '.join(names)}, lake {cfg.lake_root}")
    lock = run_lock.acquire(spark, cfg, run.as_of, run.run_id, names)
    try:
        return _run_locked(spark, cfg, stages, run, lock, say, progress)
    finally:
        run_lock.release(spark, cfg, lock)


def _run_locked(
    spark: SparkSession,
    cfg: Config,
    stages: list[tuple[str, StageFunction]],
    run: RunContext,
    lock: run_lock.Lock,
    say: Callable[[str], None],
    progress: Callable[[str], None] | None,
) -> PipelineResult:
    result = PipelineResult(run)
    for number, (stage, function) in enumerate(stages, start=1):
        step = f"[{number}/{len(stages)}] {stage}"
        group = sparkops.group_id(run.run_id, stage)
        if number > 1:  # the first stage starts on the lease just taken
            lock = run_lock.keep(spark, cfg, lock)
        with logs.stage(stage):
            say(f"{step} started")
            started = time.perf_counter()
            try:
                with sparkops.job_group(spark, group, f"microseg {stage} as_of {run.as_of}"):
                    report = function(spark, cfg, run)
            except Exception as exc:
                failed = StageReport(stage, [Entry(stage, details={"error": f"{type(exc).__name__}: {exc}"})])
                failed.seconds = time.perf_counter() - started
                failed.jobs = sparkops.jobs_in_group(spark, group)
                log_stage(spark, cfg, run, failed, status="failed")
                (progress or log.error)(
                    f"{step} FAILED after {failed.seconds:.1f}s, {_jobs(failed.jobs)}: {type(exc).__name__}"
                )
                raise
            report.seconds = time.perf_counter() - started
            report.jobs = sparkops.jobs_in_group(spark, group)
            faults.point("stage_end", stage)
            log_stage(spark, cfg, run, report)
            result.reports.append(report)
            say(f"{step} done in {report.seconds:.1f}s: {_stage_line(report)}")
    return result


def _jobs(count: int | None) -> str:
    if count is None:  # Spark Connect: not counted
        return "Spark jobs not counted"
    return f"{count:,} Spark job{'' if count == 1 else 's'}"


def _stage_line(report: StageReport) -> str:
    """``12 Spark jobs, 20,000 rows written, 31 quarantined``."""
    written = sum(e.rows_written or 0 for e in report.entries)
    quarantined = sum(e.rows_quarantined or 0 for e in report.entries)
    return f"{_jobs(report.jobs)}, {written:,} rows written, {quarantined:,} quarantined"
