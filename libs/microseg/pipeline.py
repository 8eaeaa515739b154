"""Runs the stages in order for one as_of, logs each to ops.run_log and builds the run summary."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from microseg import logs, sparkops
from microseg.assign import run_assign
from microseg.clean import run_clean
from microseg.config import STAGES, Config
from microseg.features import run_features
from microseg.ingest import run_ingest
from microseg.profiles import run_profile
from microseg.quality import run_quality
from microseg.runlog import Entry, RunContext, StageReport, log_stage
from microseg.training import run_train, summary_lines

STAGE_FUNCTIONS: dict[str, Callable[[SparkSession, Config, RunContext], StageReport]] = {
    "ingest": run_ingest,
    "clean": run_clean,
    "quality": run_quality,
    "features": run_features,
    "train": run_train,
    "assign": run_assign,
    "profile": run_profile,
}
assert tuple(STAGE_FUNCTIONS) == STAGES

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    run: RunContext
    reports: list[StageReport] = field(default_factory=list)

    def report(self, stage: str) -> StageReport | None:
        return next((r for r in self.reports if r.stage == stage), None)


def run_pipeline(
    spark: SparkSession,
    cfg: Config,
    as_of: dt.date | None = None,
    stages: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run ``stages`` (default: cfg.run.stages) for ``as_of`` (default: cfg.run.as_of).

    Each stage runs in its own Spark job group (``sparkops.group_id``), is timed, and is
    appended to ops.run_log, also when it fails (status ``failed`` with the error), and the
    error is raised again. Progress goes to the ``microseg.pipeline`` logger, one line per
    stage start and end, with the stage's name on the record; a ``progress`` callable gets
    the same lines instead (``lambda _: None`` silences them).
    """
    say = progress or log.info
    run = RunContext(as_of=as_of or cfg.run.as_of)
    result = PipelineResult(run)
    chosen = stages or cfg.run.stages
    say(f"microseg run {run.run_id}: as_of {run.as_of}, stages {', '.join(chosen)}, lake {cfg.lake_root}")
    for number, stage in enumerate(chosen, start=1):
        step = f"[{number}/{len(chosen)}] {stage}"
        group = sparkops.group_id(run.run_id, stage)
        with logs.stage(stage):
            say(f"{step} started")
            started = time.perf_counter()
            try:
                with sparkops.job_group(spark, group, f"microseg {stage} as_of {run.as_of}"):
                    report = STAGE_FUNCTIONS[stage](spark, cfg, run)
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
            log_stage(spark, cfg, run, report)
            result.reports.append(report)
            say(f"{step} done in {report.seconds:.1f}s: {_stage_line(report)}")
    return result


def _jobs(count: int) -> str:
    return f"{count:,} Spark job{'' if count == 1 else 's'}"


def _stage_line(report: StageReport) -> str:
    """``12 Spark jobs, 20,000 rows written, 31 quarantined``."""
    written = sum(e.rows_written or 0 for e in report.entries)
    quarantined = sum(e.rows_quarantined or 0 for e in report.entries)
    return f"{_jobs(report.jobs)}, {written:,} rows written, {quarantined:,} quarantined"


def summary(result: PipelineResult, cfg: Config) -> str:
    """The short end-of-run summary: rows per stage, quarantine by reason, segments, MLflow, tables."""
    lines = [f"== microseg run {result.run.run_id} as_of {result.run.as_of} =="]
    lines.append(f"{'stage':<10} {'seconds':>8} {'jobs':>6} {'rows in':>12} {'written':>12} {'quarantined':>12}")
    for r in result.reports:
        rows_in = sum(e.rows_in or 0 for e in r.entries)
        written = sum(e.rows_written or 0 for e in r.entries)
        quarantined = sum(e.rows_quarantined or 0 for e in r.entries)
        lines.append(f"{r.stage:<10} {r.seconds:>8.1f} {r.jobs:>6,} {rows_in:>12,} {written:>12,} {quarantined:>12,}")
    clean = result.report("clean")
    if clean:
        lines.append("quarantined rows by source and rule:")
        for e in clean.entries:
            for rule, count in e.details.get("quarantined_by_rule", {}).items():
                lines.append(f"  {e.source:<18} {rule:<22} {count:>8,}")
    if clean:
        coverage = {e.source: e.details["coverage"] for e in clean.entries if e.details.get("coverage") is not None}
        lines.append(
            "identity: share of rows linked to a customer: "
            + ", ".join(f"{source} {share:.1%}" for source, share in coverage.items())
        )
        conflicts = clean.info.get("identity", {}).get("conflicts", {})
        lines.append(f"identity conflicts (keys on several customers, see ops.identity_conflicts): {conflicts or 0}")
    quality = result.report("quality")
    if quality and quality.info.get("warnings"):
        lines.append("data-quality warnings (rule: failing rows):")
        for rule, count in quality.info["warnings"].items():
            lines.append(f"  {rule:<40} {count:>8,}")
    features = result.report("features")
    if features:
        excluded = features.entries[0].details.get("excluded_no_profiling_consent", 0)
        lines.append(
            f"features: {features.entries[0].rows_written:,} customers; {excluded:,} excluded (no profiling consent)"
        )
        macro = features.info.get("macro_segments", {})
        lines.append("lifecycle macro segments: " + ", ".join(f"{k} {v:,}" for k, v in macro.items()))
        for name, reason in features.info.get("features_unsupported", {}).items():
            lines.append(f"  feature {name} is null for everyone: {reason}")
    train = result.report("train")
    if train:
        lines.append(f"training: MLflow parent run {train.info['mlflow_run_id']}")
        lines += summary_lines(train.info)
    assign = result.report("assign")
    if assign:
        lines.append("segments (customers, label):")
        for segment, facts in assign.info["segments"].items():
            lines.append(f"  {segment:<28} {facts['customers']:>8,}  {facts['label'] or '(small: size only)'}")
        history = assign.info.get("history", {})
        lines.append(f"segment history: {history.get('opened', 0):,} rows opened, {history.get('closed', 0):,} closed")
    profile = result.report("profile")
    if profile:
        lines.append(f"segment report: {profile.info['report']}")
    if quality:
        lines.append(f"data docs: {cfg.lake_root}/ops/data_docs/index.html")
    lines.append(f"tables: {cfg.lake_root}/<layer>/<table>; MLflow: {cfg.tracking_uri} (make ui)")
    return "\n".join(lines)
