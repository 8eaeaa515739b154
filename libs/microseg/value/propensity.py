"""Churn propensity in the value stage: train on a time split, judge against the champion, register, score.

The classifiers (``microseg.value.churn``: gradient-boosted trees and the logistic-regression baseline) learn
from features as of ``as_of - 2 horizons`` with labels from the horizon after them, and are evaluated out of
time on features as of ``as_of - horizon`` with labels from the last horizon before as_of. The one with the
higher AUC there is the candidate (the GBT on a tie; the summary says which won and by how much). Its AUC
decides promotion: it becomes champion of microseg-churn when it scores at least the champion's AUC on the
same rows (minus ``promotion_tolerance``); a champion that cannot be scored keeps its alias (fail closed). The
champion after that decision scores the snapshot's customers who have bought by as_of.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field

import mlflow
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.features.catalog import Catalog
from microseg.features.stage import silver_inputs
from microseg.runtime import spark_models, storage
from microseg.runtime.config import Config
from microseg.runtime.sparkops import cached, described
from microseg.segmentation import registry
from microseg.value import artifacts, churn

log = logging.getLogger(__name__)
PREFERRED = "gbt"  # the candidate when both classifiers have the same AUC


@dataclass
class ChurnRun:
    """One training of the churn classifier; ``reason`` says why there is no model."""

    reason: str | None = None
    models: dict[str, PipelineModel] = field(default_factory=dict)
    metrics: dict[str, churn.ChurnMetrics] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    windows: dict[str, str] = field(default_factory=dict)
    champion: PipelineModel | None = None  # the registry's champion, loaded to be judged on the same rows
    champion_auc: float | None = None
    unscored: str | None = None  # why the champion could not be scored

    @property
    def chosen(self) -> str:
        """The classifier with the higher AUC on the test window (``PREFERRED`` on a tie)."""
        return max(self.metrics, key=lambda name: (self.metrics[name].auc, name == PREFERRED))

    def summary(self) -> dict:
        return {
            "reason": self.reason,
            "chosen": self.chosen if self.metrics else None,
            "features": self.features,
            "windows": self.windows,
            "evaluation": {name: metrics_dict(m) for name, m in self.metrics.items()},
            "champion_auc_today": self.champion_auc,
        }


def metrics_dict(metrics: churn.ChurnMetrics) -> dict:
    """``metrics`` as JSON-able values (calibration bins as dicts); ``metrics_from_dict`` reverses it."""
    return {**dataclasses.asdict(metrics), "calibration": [b._asdict() for b in metrics.calibration]}


def metrics_from_dict(values: dict) -> churn.ChurnMetrics:
    bins = tuple(churn.CalibrationBin(**b) for b in values["calibration"])
    return churn.ChurnMetrics(**{**values, "calibration": bins})


def null_features(featured: DataFrame, names: list[str]) -> dict[str, str]:
    """The features null for every customer of the snapshot, with why (one Spark job)."""
    counts = featured.agg(*[F.count(n).alias(n) for n in names]).first().asDict()
    return {n: "null for every customer of the snapshot" for n, c in counts.items() if not c}


def _labels(rows: DataFrame) -> dict[float, int]:
    return {r["label"]: r["count"] for r in rows.groupBy("label").count().collect()}


def train(spark: SparkSession, cfg: Config, catalog: Catalog, featured: DataFrame, as_of: dt.date) -> ChurnRun:
    """Fit and evaluate the classifiers (see the module docstring); a ChurnRun with a reason when it cannot."""
    settings = cfg.value.churn
    if not settings.enabled:
        return ChurnRun(reason="value.churn.enabled is false")
    horizon = dt.timedelta(days=settings.horizon_days)
    fit_cut, test_cut = as_of - 2 * horizon, as_of - horizon
    windows = {"fit_cutoff": str(fit_cut), "test_cutoff": str(test_cut), "horizon_days": str(settings.horizon_days)}
    with described(spark, "value: churn features supported"):
        unsupported = null_features(featured, catalog.names)
    features = churn.model_features(catalog, unsupported)
    inputs = silver_inputs(spark, cfg)
    fit_rows, test_rows = (
        churn.labelled(inputs, catalog, cfg.features, cut, settings.horizon_days, unsupported)
        for cut in (fit_cut, test_cut)
    )
    run = ChurnRun(features=features, windows=windows)
    with cached(fit_rows, test_rows) as (fit_rows, test_rows):
        with described(spark, "value: churn labels"):
            labels = {"fit": _labels(fit_rows), "test": _labels(test_rows)}
        for window, counts in labels.items():
            total = sum(counts.values())
            if total < settings.min_rows or len(counts) < 2:
                run.reason = (
                    f"no churn model: the {window} window (cut-off {windows[f'{window}_cutoff']}) has {total} "
                    f"labelled customers {dict(sorted(counts.items()))}; it needs value.churn.min_rows "
                    f"({settings.min_rows}) with both labels (history of two horizons before as_of)"
                )
                log.warning("value: %s", run.reason)
                return run
        scratch = storage.join(cfg.lake_root, "_tmp", f"churn-{uuid.uuid4().hex[:12]}")
        try:
            with described(spark, "value: churn classifiers (GBT and the logistic baseline)"):
                run.models = churn.fit(fit_rows, features, settings, scratch)
        finally:
            storage.remove(cfg, scratch)
        with described(spark, "value: churn evaluation on the test window"):
            run.metrics = {name: churn.evaluate(model, test_rows) for name, model in run.models.items()}
            _judge_champion(cfg, run, test_rows)
    return run


def _judge_champion(cfg: Config, run: ChurnRun, test_rows: DataFrame) -> None:
    """The champion's AUC on the same test rows, or why it could not be scored."""
    champion = registry.champion_version(cfg, artifacts.CHURN_MODEL)
    if champion is None:
        return
    try:
        run.champion = spark_models.load_spark_model(cfg, f"runs:/{champion.run_id}/churn_model")
        run.champion_auc = churn.evaluate(run.champion, test_rows).auc
    except Exception as exc:  # any failure to load or score: the champion keeps its alias (fail closed)
        run.champion = None
        run.unscored = f"champion v{champion.version} could not be scored ({type(exc).__name__}: {str(exc)[:300]})"
        log.warning("value: %s", run.unscored)


def log_and_promote(cfg: Config, run: ChurnRun, tags: dict) -> dict:
    """Log the metrics, the calibration plot and the chosen model to the active MLflow run, and register it."""
    if run.reason is not None:
        mlflow.set_tag("churn", run.reason[:5000])
        return {"version": None, "champion": None, "decision": run.reason}
    for name, metrics in run.metrics.items():
        mlflow.log_metrics(metrics.as_metrics(f"churn_{name}_"))
        mlflow.log_dict(metrics_dict(metrics), f"churn_evaluation_{name}.json")
    mlflow.log_dict({"features": run.features, **run.windows}, "churn_features.json")
    artifacts.log_figure(churn.calibration_figure(run.metrics), "churn_calibration.png")
    info = spark_models.log_spark_model(
        cfg, run.models[run.chosen], "churn_model", pip_requirements=cfg.mlflow.pip_requirements
    )
    auc, tolerance = run.metrics[run.chosen].auc, cfg.value.churn.promotion_tolerance
    if run.unscored is not None:
        better, why = False, run.unscored
    elif run.champion_auc is None:
        better, why = True, f"{run.chosen} AUC {auc:.4f}, no champion yet"
    else:
        better = auc >= run.champion_auc - tolerance
        why = f"{run.chosen} AUC {auc:.4f} vs the champion's {run.champion_auc:.4f} on the same test window"
    if run.champion_auc is not None:
        mlflow.log_metric("churn_champion_auc_today", run.champion_auc)
    decision = artifacts.promote(cfg, artifacts.CHURN_MODEL, info.model_uri, better, why, {"as_of": tags["as_of"]})
    mlflow.set_tags({"churn_promotion": decision["decision"][:5000], "churn_classifier": run.chosen})
    return decision


def scores(run: ChurnRun, decision: dict, featured: DataFrame, purchases: DataFrame) -> DataFrame | None:
    """customer_id, churn_probability of the snapshot's buyers from the champion after ``decision``; None when
    there is no model to score with."""
    if run.reason is not None or decision["champion"] is None:
        return None
    promoted = decision["champion"] == decision["version"] or not decision["version"]
    model = run.models[run.chosen] if promoted else run.champion
    if model is None:
        return None
    return churn.score(model, featured.join(purchases.select("customer_id"), "customer_id", "left_semi"))
