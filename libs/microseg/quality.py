"""Data-quality gates: the one module that talks to Great Expectations.

Rules are data (conf/quality/*.yaml): each names an expectation, a column and a
severity. ``warn`` rules are reported; a failing ``critical`` rule raises
DataQualityError, which stops the run before any gold table is written.
Results of every rule go to ops.dq_results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg import tables
from microseg.clean import Rule, flag_rules, quarantine_records
from microseg.config import Config, QualityRule
from microseg.errors import ConfigError, DataQualityError, ReconciliationError
from microseg.runlog import Entry, RunContext, StageReport
from microseg.sparkops import cached, described

# GX reports usage statistics over the network unless told not to; this machine has none.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

DOCS_SITE = "microseg"
# Counts only (element, unexpected, percent): a sample of unexpected values costs a Spark job per
# rule, also for every rule that passes (about 40% of the expectations' jobs and time).
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}
DQ_SCHEMA = (
    "run_id STRING, as_of DATE, table STRING, rule STRING, expectation STRING, column STRING, severity STRING, "
    "success BOOLEAN, evaluated BIGINT, unexpected_count BIGINT, unexpected_percent DOUBLE"
)


class TableRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str
    rules: list[QualityRule]


@dataclass(frozen=True)
class RuleResult:
    table: str
    rule: QualityRule
    success: bool
    evaluated: int
    unexpected_count: int
    unexpected_percent: float


def load_rules(cfg: Config) -> list[TableRules]:
    folder = cfg.conf_file(cfg.quality.rules_dir)
    suites = []
    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            suites.append(TableRules.model_validate(yaml.safe_load(path.read_text())))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"quality rules {path} are invalid: {problems}") from None
    return suites


def _expectation(rule: QualityRule):
    import great_expectations as gx

    common = {"column": rule.column, "meta": {"rule": rule.name}}
    if rule.mostly < 1:
        common["mostly"] = rule.mostly
    if rule.where:
        common |= {"row_condition": rule.where, "condition_parser": "spark"}
    match rule.expectation:
        case "not_null":
            return gx.expectations.ExpectColumnValuesToNotBeNull(**common)
        case "unique":
            return gx.expectations.ExpectColumnValuesToBeUnique(**common)
        case "between":
            return gx.expectations.ExpectColumnValuesToBeBetween(min_value=rule.min, max_value=rule.max, **common)
        case "in_set":
            return gx.expectations.ExpectColumnValuesToBeInSet(value_set=rule.values, **common)
        case "regex":
            return gx.expectations.ExpectColumnValuesToMatchRegex(regex=rule.pattern, **common)
    raise ConfigError(f"rule {rule.name}: unknown expectation {rule.expectation}")  # pragma: no cover


def validate(frames: dict[str, DataFrame], suites: list[TableRules], docs_dir: str | None = None) -> list[RuleResult]:
    """Run each table's suite through an ephemeral GX context; return one result per rule.

    With ``docs_dir``, GX Data Docs (static HTML of the suites and their results) are built there.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    actions = []
    if docs_dir:
        site = {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
        }
        context.add_data_docs_site(site_name=DOCS_SITE, site_config=site)
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])]
    datasource = context.data_sources.add_spark(name="microseg")
    results: list[RuleResult] = []
    for suite_cfg in suites:
        df = frames[suite_cfg.table]
        missing = sorted({r.column for r in suite_cfg.rules} - set(df.columns))
        if missing:
            raise DataQualityError(
                f"table {suite_cfg.table} has no column(s) {missing} that its quality rules check; "
                f"fix conf/quality or the clean stage"
            )
        asset = datasource.add_dataframe_asset(name=suite_cfg.table)
        batch = asset.add_batch_definition_whole_dataframe(name=f"{suite_cfg.table}:whole")
        suite = context.suites.add(
            gx.ExpectationSuite(
                name=f"{suite_cfg.table}:suite", expectations=[_expectation(r) for r in suite_cfg.rules]
            )
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_cfg.table}:validation", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{suite_cfg.table}:checkpoint",
                validation_definitions=[definition],
                actions=actions,
                result_format=RESULT_FORMAT,
            )
        )
        with described(df.sparkSession, f"quality {suite_cfg.table}: expectations"):
            run_result = checkpoint.run(batch_parameters={"dataframe": df})
        outcome = next(iter(run_result.run_results.values()))
        by_name = {r.name: r for r in suite_cfg.rules}
        for item in outcome.results:
            rule = by_name[item.expectation_config.meta["rule"]]
            stats = item.result or {}
            results.append(
                RuleResult(
                    table=suite_cfg.table,
                    rule=rule,
                    success=bool(item.success),
                    evaluated=int(stats.get("element_count") or 0),
                    unexpected_count=int(stats.get("unexpected_count") or 0),
                    unexpected_percent=float(stats.get("unexpected_percent") or 0.0),
                )
            )
    return results


def violation(rule: QualityRule) -> Column:
    """The row-level twin of a rule's expectation: true where a row breaks it (for quarantine rules)."""
    col = F.col(rule.column)
    match rule.expectation:
        case "not_null":
            broken = col.isNull()
        case "unique":
            broken = col.isNotNull() & (F.count(F.lit(1)).over(Window.partitionBy(col)) > 1)
        case "between":
            low = col < F.lit(rule.min) if rule.min is not None else F.lit(False)
            high = col > F.lit(rule.max) if rule.max is not None else F.lit(False)
            broken = low | high
        case "in_set":
            broken = ~col.isin(list(rule.values or []))
        case "regex":
            broken = ~col.rlike(rule.pattern or "")
    return broken & F.expr(rule.where) if rule.where else broken


def quarantine_rows(spark: SparkSession, cfg: Config, table: str, rules: list[QualityRule]) -> Entry:
    """Move the rows of ``table`` that break quarantine rules to quarantine.<table>, each with its first rule.

    Returns:
        The table's entry: rows in, rows kept (as the overwrite committed them), rows moved, and the
        rows moved by rule in ``details["quarantined_by_rule"]``.

    Raises:
        ReconciliationError: if rows in != rows kept + rows moved.
    """
    df = tables.read(spark, cfg, table)
    row_rules = [Rule(r.name, r.reason or f"{r.expectation} on {r.column}", violation(r)) for r in rules]
    with cached(flag_rules(df, row_rules)) as flagged:
        by_rule = {r["_rule"]: r["count"] for r in flagged.groupBy("_rule").count().collect()}
        rows_in, kept = sum(by_rule.values()), by_rule.pop(None, 0)
        if by_rule:
            tables.append(quarantine_records(flagged, table, df.columns), cfg, f"quarantine.{table.split('.', 1)[1]}")
            good = flagged.where(F.col("_rule").isNull()).select(*[F.col(f"`{c}`") for c in df.columns])
            kept = tables.overwrite(good, cfg, table).rows_written
    moved = sum(by_rule.values())
    if rows_in != kept + moved:
        raise ReconciliationError(
            f"{table}: {rows_in} rows in but {kept} kept + {moved} quarantined; rerun the quality stage"
        )
    return Entry(table, rows_in, kept, moved, details={"quarantined_by_rule": dict(sorted(by_rule.items()))})


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
    return spark.createDataFrame(rows, DQ_SCHEMA)


def run_quality(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Validate every silver table that has rules; record results; raise on a critical failure."""
    suites = [s for s in load_rules(cfg) if tables.exists(spark, cfg, s.table)]
    frames = {s.table: tables.read(spark, cfg, s.table) for s in suites}
    results = validate(frames, suites, docs_dir=f"{cfg.lake_root}/ops/data_docs")
    with described(spark, "quality: ops.dq_results"):
        tables.append(results_frame(spark, run, results), cfg, "ops.dq_results")
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
