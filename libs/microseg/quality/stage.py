"""Quality stage: the data-quality gate between what clean staged and silver (Great Expectations, ``quality.gx``).

Rules are data (conf/quality/*.yaml): each names an expectation, a column and a severity. Row rules run on the
staged rows; ``unique`` rules on the table as it will be once they are published (its rows of other batches and
the staged ones). ``warn`` rules are reported; ``quarantine`` rules move the rows that break them to
quarantine.<table>. The run stops on a failing ``critical`` rule (the structural ones: keys unique across the
whole table, values clean guarantees) and on a batch whose share of rows clean quarantined passes
``quality.max_rejected_share`` (or its source's own, in the mapping; rules the mapping lists as
``expected_rules`` do not count, nor ``superseded_duplicate``): the staged batches are marked failed in
ops.batches and DataQualityError names what failed; nothing is published, every silver (and so gold) table stays
at its version. Only when every rule allows it is the staging published (``quality.publish``), one Delta commit
per table. Results of every rule go to ops.dq_results.
"""

from __future__ import annotations

import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.clean import staging
from microseg.clean.staging import FAILED, REBUILD, Manifest
from microseg.ingest.mapping import SourceSpec, load_mapping
from microseg.quality.gx import Check, RuleResult, TableRules, load_rules, validate
from microseg.quality.publish import Gated, publish
from microseg.quality.rules import Rule, flag_rules, violation
from microseg.runtime import lake, tables
from microseg.runtime.config import Config, QualityRule
from microseg.runtime.errors import DataQualityError
from microseg.runtime.lake import Table
from microseg.runtime.runlog import RunContext, StageReport
from microseg.runtime.sparkops import described

# Rules that set a row aside without rejecting its data: an older version of a CRM record, replaced by the newer
# one in the same batch (a feed of updates can carry many), is not counted in a batch's rejected share.
NOT_REJECTED = frozenset({"superseded_duplicate"})

# GX reports usage statistics over the network unless told not to; this machine has none.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def checks_of(spark: SparkSession, cfg: Config, manifest: Manifest, suites: list[TableRules]) -> list[Check]:
    """What GX validates: each staged table's row rules on its staged rows, its ``unique`` rules on the table
    as it will be (so a key published by an earlier batch counts).

    For batches added to a table, the ``unique`` rules see only the rows that share a value of their columns
    with a staged row: the published rows passed the same rules when they were published, so a value can only
    repeat where a staged row has it, and a day's check reads the table's key columns instead of grouping them.
    """
    checks: list[Check] = []
    for suite in suites:
        table = lake.named(suite.table)
        if table.name not in manifest.tables:
            continue
        rows = [r for r in suite.rules if r.expectation != "unique"]
        keys = [r for r in suite.rules if r.expectation == "unique"]
        staged = staging.staged(spark, cfg, table)
        if rows:
            checks.append((suite.table, TableRules(table=suite.table, rules=rows), staged))
        if keys:
            columns = sorted({r.column for r in keys})
            whole = staging.current(spark, cfg, table, manifest).select(*columns)
            name = f"{suite.table} (whole table)"
            if manifest.plan_of(table).mode != REBUILD and tables.exists(spark, cfg, table):
                whole, name = sharing_a_value(whole, staged, columns), f"{suite.table} (keys of the batches)"
            checks.append((name, TableRules(table=suite.table, rules=keys), whole))
    return checks


def sharing_a_value(rows: DataFrame, staged: DataFrame, columns: list[str]) -> DataFrame:
    """The ``rows`` with a value of one of ``columns`` that a ``staged`` row has too (each row once)."""
    met = F.lit(False)
    for i, column in enumerate(columns):
        values = staged.where(F.col(column).isNotNull()).select(F.col(column).alias(f"_met_{i}")).distinct()
        rows = rows.join(values, rows[column] == values[f"_met_{i}"], "left")
        met = met | F.col(f"_met_{i}").isNotNull()
    return rows.where(met).select(*columns)


def rejected_batches(cfg: Config, manifest: Manifest, specs: dict[str, SourceSpec]) -> tuple[list[str], dict]:
    """The batches whose share of rows clean quarantined passes their source's threshold, each described (source,
    batch, share, threshold, top rules), and every source's highest share, from the counts clean staged."""
    failures, highest = [], {}
    for source, batches in sorted(manifest.batches.items()):
        spec = specs.get(source)
        limit = cfg.quality.max_rejected_share
        if spec is not None and spec.max_rejected_share is not None:
            limit = spec.max_rejected_share
        expected = NOT_REJECTED | set(spec.expected_rules if spec is not None else ())
        for batch, counts in sorted(batches.items()):
            counted = {rule: n for rule, n in counts.quarantined.items() if rule not in expected}
            rejected = sum(counted.values())
            share = rejected / counts.rows if counts.rows else 0.0
            highest[source] = max(highest.get(source, 0.0), round(share, 4))
            if share > limit:
                top = sorted(counted.items(), key=lambda item: (-item[1], item[0]))[:3]
                failures.append(
                    f"source {source} batch {batch}: {rejected} of {counts.rows} rows ({share:.1%}) quarantined by "
                    f"clean, more than max_rejected_share {limit:.1%}; top rules: "
                    + ", ".join(f"{rule} ({n})" for rule, n in top)
                )
    return failures, highest


def gate(table: Table, rows: DataFrame, rules: list[QualityRule]) -> Gated:
    """The staged ``rows`` of ``table`` with the rows breaking its failed ``quarantine`` rules flagged."""
    row_rules = [Rule(r.name, r.reason or f"{r.expectation} on {r.column}", violation(r)) for r in rules]
    return Gated(table, flag_rules(rows, row_rules), rows.columns, bool(row_rules))


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
    """Validate what clean staged; record results; publish it, or raise on a critical failure."""
    report = StageReport("quality")
    manifest = staging.read_manifest(cfg)
    if manifest is None:
        report.info["staged"] = "nothing staged: silver is up to date"
        return report
    suites = load_rules(cfg)
    checks = checks_of(spark, cfg, manifest, suites)
    docs = f"{cfg.lake_root}/ops/data_docs"
    results = validate(checks, docs_dir=docs, store=cfg, workers=cfg.run.parallel_sources)
    with described(spark, "quality: ops.dq_results"):
        tables.append(results_frame(spark, run, results), cfg, lake.DQ_RESULTS)
    critical = [r for r in results if not r.success and r.rule.severity == "critical"]
    rejected, report.info["rejected_share"] = rejected_batches(cfg, manifest, load_mapping(cfg))
    if critical or rejected:
        lines = "; ".join(
            rejected
            + [
                f"{r.table} rule {r.rule.name} ({r.rule.expectation} on {r.rule.column}): "
                f"{r.unexpected_count} of {r.evaluated} rows fail"
                for r in critical
            ]
        )
        _record_failed(spark, cfg, manifest, lines)
        share_hint = (
            " A batch with too many rejected rows: its rows and reasons are in the staged quarantine; if the feed is "
            "known to carry such rows, set max_rejected_share or expected_rules of the source in its mapping "
            "(conf/sources), or quality.max_rejected_share."
            if rejected
            else ""
        )
        raise DataQualityError(
            f"critical data-quality failure, nothing published: {lines}. Every silver and gold table is unchanged; "
            f"the batches are marked failed in ops.batches and their rows stay in {cfg.lake_root}/staging for "
            f"inspection. Inspect ops.dq_results for run {run.run_id}, fix the source file (ingest takes a "
            f"changed file again) or the clean rules, then rerun.{share_hint}"
        )
    gated = []
    for name in manifest.tables:
        table = lake.named(name)
        if table.layer == "quarantine":  # clean's quarantine: published with the batches' other quarantine
            continue
        failed = [r.rule for r in results if r.table == name and not r.success and r.rule.severity == "quarantine"]
        gated.append(gate(table, staging.staged(spark, cfg, table), failed))
    entries = publish(spark, cfg, manifest, gated, run.run_id)
    for entry in entries:
        mine = [r for r in results if r.table == entry.source]
        failed = {r.rule.name: r.unexpected_count for r in mine if not r.success}
        entry.details = {"failed_rules": failed, **entry.details}
    report.entries = entries
    report.info["warnings"] = {
        f"{r.table}:{r.rule.name}": r.unexpected_count for r in results if not r.success and r.rule.severity == "warn"
    }
    return report


def _record_failed(spark: SparkSession, cfg: Config, manifest: Manifest, reason: str) -> None:
    rows = [
        (plan.source, batch, FAILED, plan.mode, None, 0, None, manifest.run_id, reason[:5000])
        for plan in manifest.plans.values()
        if plan.source != staging.IDENTITY
        for batch in plan.batches
    ]
    staging.record(spark, cfg, rows)
