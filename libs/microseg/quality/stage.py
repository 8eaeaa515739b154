"""Quality stage: the data-quality gate over silver (Great Expectations through ``quality.gx``).

Rules are data (conf/quality/*.yaml): each names an expectation, a column and a
severity. ``warn`` rules are reported; a failing ``critical`` rule raises
DataQualityError, which stops the run before any gold table is written.
Results of every rule go to ops.dq_results.
"""

from __future__ import annotations

import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.quality.gx import RuleResult, load_rules, validate
from microseg.quality.rules import Rule, flag_rules, quarantine_records, violation
from microseg.runtime import lake, tables
from microseg.runtime.config import Config, QualityRule
from microseg.runtime.errors import DataQualityError, ReconciliationError
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import cached, described

# GX reports usage statistics over the network unless told not to; this machine has none.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def quarantine_rows(spark: SparkSession, cfg: Config, name: str, rules: list[QualityRule]) -> Entry:
    """Move the rows of ``table`` that break quarantine rules to quarantine.<table>, each with its first rule.

    Returns:
        The table's entry: rows in, rows kept (as the overwrite committed them), rows moved, and the
        rows moved by rule in ``details["quarantined_by_rule"]``.

    Raises:
        ReconciliationError: if rows in != rows kept + rows moved.
    """
    table = lake.named(name)
    df = tables.read(spark, cfg, table)
    row_rules = [Rule(r.name, r.reason or f"{r.expectation} on {r.column}", violation(r)) for r in rules]
    with cached(flag_rules(df, row_rules)) as flagged:
        by_rule = {r["_rule"]: r["count"] for r in flagged.groupBy("_rule").count().collect()}
        rows_in, kept = sum(by_rule.values()), by_rule.pop(None, 0)
        if by_rule:
            tables.append(quarantine_records(flagged, name, df.columns), cfg, lake.quarantine(table.short_name))
            good = flagged.where(F.col("_rule").isNull()).select(*[F.col(f"`{c}`") for c in df.columns])
            kept = tables.overwrite(good, cfg, table).rows_written
    moved = sum(by_rule.values())
    if rows_in != kept + moved:
        raise ReconciliationError(
            f"{name}: {rows_in} rows in but {kept} kept + {moved} quarantined; rerun the quality stage"
        )
    return Entry(name, rows_in, kept, moved, details={"quarantined_by_rule": dict(sorted(by_rule.items()))})


def results_frame(spark: SparkSession, run: RunContext, results: list[RuleResult]) -> DataFrame:
    rows = [
        (
            run.run_id,
            run.as_of,
            r.table,
            r.rule.name,
            r.rule.expectation,
            r.rule.column,
            r.rule.severity,
            r.success,
            r.evaluated,
            r.unexpected_count,
            r.unexpected_percent,
        )
        for r in results
    ]
    return spark.createDataFrame(rows, lake.DQ_RESULTS.ddl)


def run_quality(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Validate every silver table that has rules; record results; raise on a critical failure."""
    suites = [s for s in load_rules(cfg) if tables.exists(spark, cfg, s.table)]
    frames = {s.table: tables.read(spark, cfg, s.table) for s in suites}
    results = validate(frames, suites, docs_dir=f"{cfg.lake_root}/ops/data_docs", store=cfg)
    with described(spark, "quality: ops.dq_results"):
        tables.append(results_frame(spark, run, results), cfg, lake.DQ_RESULTS)
    report = StageReport("quality")
    critical = [r for r in results if not r.success and r.rule.severity == "critical"]
    for suite in suites:
        mine = [r for r in results if r.table == suite.table]
        failed = {r.rule.name: r.unexpected_count for r in mine if not r.success}
        to_quarantine = [r.rule for r in mine if not r.success and r.rule.severity == "quarantine"]
        if to_quarantine and not critical:
            with described(spark, f"quality {suite.table}: quarantine"):
                entry = quarantine_rows(spark, cfg, suite.table, to_quarantine)
        else:
            entry = Entry(suite.table, rows_quarantined=0, details={"quarantined_by_rule": {}})
        entry.details = {"failed_rules": failed, **entry.details}
        report.entries.append(entry)
    report.info["warnings"] = {
        f"{r.table}:{r.rule.name}": r.unexpected_count for r in results if not r.success and r.rule.severity == "warn"
    }
    if critical:
        lines = "; ".join(
            f"{r.table} rule {r.rule.name} ({r.rule.expectation} on {r.rule.column}): "
            f"{r.unexpected_count} of {r.evaluated} rows fail"
            for r in critical
        )
        raise DataQualityError(
            f"critical data-quality failure, run stopped before any gold table was written: {lines}. "
            f"Inspect ops.dq_results for run {run.run_id}, fix the source or the clean rules, then rerun."
        )
    return report
