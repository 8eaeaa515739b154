"""The one Great Expectations adapter: the quality rules as expectation suites, validated on Spark DataFrames."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pyspark.sql import DataFrame

from microseg.runtime import storage
from microseg.runtime.config import Config, QualityRule
from microseg.runtime.errors import ConfigError, DataQualityError
from microseg.runtime.sparkops import cached, described, in_parallel

DOCS_SITE = "microseg"


# Counts only (element, unexpected, percent): a sample of unexpected values costs a Spark job per
# rule, also for every rule that passes (about 40% of the expectations' jobs and time).
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


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


def rule_files(cfg: Config) -> list[Path]:
    return sorted(Path(cfg.conf_file(cfg.quality.rules_dir)).glob("*.yaml"))


def read_rules(path: Path) -> TableRules:
    """One rule file, validated.

    Raises:
        ConfigError: naming the file and every key at fault.
    """
    try:
        return TableRules.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"quality rules {path} are not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"quality rules {path} are invalid: {problems}") from None


def load_rules(cfg: Config) -> list[TableRules]:
    return [read_rules(path) for path in rule_files(cfg)]


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


Check = tuple[str, TableRules, DataFrame]  # a name for GX (unique), the rules, the rows they validate


def validate(
    checks: list[Check], docs_dir: str | None = None, store: Config | None = None, workers: int = 1
) -> list[RuleResult]:
    """Run each check's rules on its rows through an ephemeral GX context, ``workers`` checks side by side;
    return one result per rule, in the order of the checks.

    With ``docs_dir`` (a folder or URI; ``store`` the config that reaches it), GX Data Docs (static HTML of
    the suites and their results) are published there: built in a local folder, then copied (GX's own
    stores know no Hadoop file systems).
    """
    if not docs_dir:
        return _validate(checks, None, workers)
    with tempfile.TemporaryDirectory(prefix="microseg-data-docs-") as local:
        results = _validate(checks, local, workers)
        storage.put_folder(store, local, docs_dir)
    return results


def _validate(checks: list[Check], docs_dir: str | None, workers: int) -> list[RuleResult]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir:
        site = {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
        }
        context.add_data_docs_site(site_name=DOCS_SITE, site_config=site)
    runs = []
    for name, suite_cfg, df in checks:
        missing = sorted({r.column for r in suite_cfg.rules} - set(df.columns))
        if missing:
            raise DataQualityError(
                f"table {suite_cfg.table} has no column(s) {missing} that its quality rules check; "
                f"fix conf/quality or the clean stage"
            )
        # A data source (and so an execution engine, which holds one active batch) per check: checks run side
        # by side. The engine is made here, not in a worker thread. GX would persist each frame and never
        # unpersist it (memory held all run long, and a later write to a table the frame reads makes Spark
        # recache it): ``_runner`` caches it for the check's time instead.
        datasource = context.data_sources.add_spark(name=name, persist=False)
        datasource.get_execution_engine()
        asset = datasource.add_dataframe_asset(name="rows")
        batch = asset.add_batch_definition_whole_dataframe(name=f"{name}:whole")
        suite = context.suites.add(
            gx.ExpectationSuite(name=f"{name}:suite", expectations=[_expectation(r) for r in suite_cfg.rules])
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}:validation", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}:checkpoint",
                validation_definitions=[definition],
                result_format=RESULT_FORMAT,
            )
        )
        runs.append(_runner(name, checkpoint, df))
    results: list[RuleResult] = []
    spark = checks[0][2].sparkSession if checks else None
    for (_, suite_cfg, _), run_result in zip(checks, in_parallel(spark, runs, workers), strict=True):
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
    if docs_dir:  # once, from every result the runs stored (an UpdateDataDocsAction would rebuild it per check)
        context.build_data_docs(site_names=[DOCS_SITE])
    return results


def _runner(name: str, checkpoint, df: DataFrame) -> Callable[[], object]:  # noqa: ANN001 - a gx.Checkpoint
    def run() -> object:
        with described(df.sparkSession, f"quality {name}: expectations"), cached(df):
            return checkpoint.run(batch_parameters={"dataframe": df})

    return run
