"""The pipeline's stages, in order (the one stage list), the run of a chosen few, and the run's summary."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import SparkSession

from microseg.clean.stage import run_clean
from microseg.features.stage import run_features
from microseg.ingest.stage import run_ingest
from microseg.outputs.assign import run_assign
from microseg.outputs.profiles import run_profile
from microseg.quality.stage import run_quality
from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError
from microseg.runtime.runner import PipelineResult, StageFunction, run_stages
from microseg.segmentation.stage import check_algorithms, run_train, summary_lines
from microseg.value.stage import run_value
from microseg.value.stage import summary_lines as value_lines

# The one stage list: every stage's name and function, in the order a run takes them.
STAGES: dict[str, StageFunction] = {
    "ingest": run_ingest,
    "clean": run_clean,
    "quality": run_quality,
    "features": run_features,
    "value": run_value,
    "train": run_train,
    "assign": run_assign,
    "profile": run_profile,
}


def run_pipeline(
    spark: SparkSession,
    cfg: Config,
    as_of: dt.date | None = None,
    stages: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    full_refresh: bool = False,
    retrain: bool = False,
) -> PipelineResult:
    """Run the named ``stages`` (default: cfg.run.stages, or every stage) for ``as_of`` (default: cfg.run.as_of,
    else yesterday in UTC); ``full_refresh``: clean rebuilds silver from all of bronze; ``retrain``: train even
    if the champions were trained on the same inputs.

    Raises:
        ConfigError: a stage name, or a layer's algorithm when train is to run, is unknown (before anything runs).
    """
    names = selected_stages(cfg, stages)
    if "train" in names:
        check_algorithms(cfg)  # before anything runs, as the stage names
    chosen = [(name, STAGES[name]) for name in names]
    return run_stages(spark, cfg, chosen, as_of, progress, full_refresh=full_refresh, retrain=retrain)


def selected_stages(cfg: Config, stages: list[str] | None = None) -> list[str]:
    """The stages a run takes: ``stages``, else ``run.stages``, else every stage, in order.

    Raises:
        ConfigError: naming an unknown stage.
    """
    names = stages or cfg.run.stages or list(STAGES)
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        origin = "run.stages" if not stages else "stages"
        raise ConfigError(f"{origin} has unknown stage(s) {unknown}; known stages: {list(STAGES)}")
    return names


def stage_name(function: StageFunction) -> str:
    """The name the stage list gives a stage function."""
    return next(name for name, f in STAGES.items() if f is function)


def summary(result: PipelineResult, cfg: Config) -> str:
    """The short end-of-run summary: rows per stage, quarantine by reason, segments, MLflow, tables."""
    lines = [f"== microseg run {result.run.run_id} as_of {result.run.as_of} =="]
    lines.append(f"{'stage':<10} {'seconds':>8} {'jobs':>6} {'rows in':>12} {'written':>12} {'quarantined':>12}")
    for r in result.reports:
        rows_in = sum(e.rows_in or 0 for e in r.entries)
        written = sum(e.rows_written or 0 for e in r.entries)
        quarantined = sum(e.rows_quarantined or 0 for e in r.entries)
        jobs = "-" if r.jobs is None else f"{r.jobs:,}"  # None: not counted (Spark Connect)
        lines.append(f"{r.stage:<10} {r.seconds:>8.1f} {jobs:>6} {rows_in:>12,} {written:>12,} {quarantined:>12,}")
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
    skipped = [r.info["skipped"] for r in result.reports if r.info.get("skipped")]
    if skipped:
        lines.append("skipped (nothing they read changed):")
        lines += [f"  {line}" for line in skipped]
    features = result.report("features")
    if features and not features.info.get("skipped"):
        excluded = features.entries[0].details.get("excluded_no_profiling_consent", 0)
        lines.append(
            f"features: {features.entries[0].rows_written:,} customers; {excluded:,} excluded (no profiling consent)"
        )
        macro = features.info.get("macro_segments", {})
        lines.append("lifecycle macro segments: " + ", ".join(f"{k} {v:,}" for k, v in macro.items()))
        for name, reason in features.info.get("features_unsupported", {}).items():
            lines.append(f"  feature {name} is null for everyone: {reason}")
    value = result.report("value")
    if value and not value.info.get("skipped"):
        lines += value_lines(value.info)
    train = result.report("train")
    if train and not train.info.get("skipped"):
        lines.append(f"training: MLflow parent run {train.info['mlflow_run_id']}")
        lines += summary_lines(train.info)
    assign = result.report("assign")
    if assign:
        lines.append("segments (customers, label):")
        for segment, facts in assign.info["segments"].items():
            lines.append(f"  {segment:<28} {facts['customers']:>8,}  {facts['label'] or '(small: size only)'}")
        history = assign.info.get("history", {})
        line = f"segment history: {history.get('opened', 0):,} rows opened, {history.get('closed', 0):,} closed"
        if history.get("reopened") or history.get("removed"):
            line += f"; undone from an earlier run: {history['reopened']:,} reopened, {history['removed']:,} removed"
        lines.append(line)
    profile = result.report("profile")
    if profile:
        lines.append(f"segment report: {profile.info['report']}")
    if quality:
        lines.append(f"data docs: {cfg.lake_root}/ops/data_docs/index.html")
    lines.append(f"tables: {cfg.lake_root}/<layer>/<table>; MLflow: {cfg.tracking_uri} (make ui)")
    return "\n".join(lines)
