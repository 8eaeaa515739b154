"""Churn propensity: a Spark MLlib classifier of who stops buying, on the catalog's features as of a cut-off.

A labelled row is a customer with at least one non-return order on or before the cut-off day (UTC, inclusive),
their catalog features as of the cut-off (``build_features``: nothing after the end of the cut-off day is read)
and ``label``: 1.0 (churned) when they place no non-return order in the ``horizon_days`` days after it, i.e. with
``order_ts`` in [cut-off + 1 day, cut-off + horizon + 1 day), else 0.0. Only the label reads later orders.

Two pipelines are fitted on the same rows: gradient-boosted trees (the model) and a standardised logistic
regression (the baseline). A null feature means "not applicable" (recency of a customer who never bought on a
channel, a rate without a denominator), never 0; how each model sees it is said in ``_null_handling``.

Metrics on a held-out window (``evaluate``): AUC, log loss (probabilities clipped to [1e-15, 1 - 1e-15]), lift
of the top decile (churn rate among rows whose probability is at least the approximate 0.9 quantile, over the
base rate; ties at the threshold are all in, so the "decile" can hold a few more rows than 10%) and a
reliability table over ten equal-width probability bins. Pure DataFrame code: the caller writes and logs.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from microseg.features.catalog import Catalog
from microseg.features.stage import Inputs, build_features
from microseg.runtime import plots
from microseg.runtime.config import ChurnConfig, FeaturesConfig
from microseg.runtime.sparkops import cached

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Below every catalog feature's range (days, counts, amounts, shares, ratios >= -1, scores): a tree isolates
# "no value" with one split instead of mixing it with "0 days ago".
SENTINEL = -1.0e6
EPSILON = 1e-15
QUANTILE_ERROR = 1e-3  # approxQuantile's relative rank error for the top-decile threshold
BINS = 10


def model_features(catalog: Catalog, unsupported: dict[str, str]) -> list[str]:
    """The features the classifier uses, in catalog order: every catalog feature the data supports (an unsupported
    one is null for everyone). The catalog's features are all numeric (``labelled`` checks the types);
    macro_segment, a string derived from them, is not a catalog feature and stays out."""
    return [name for name in catalog.names if name not in unsupported]


def _end_of(day: dt.date) -> Column:
    """The first instant after ``day`` (UTC): an event before it is on or before ``day``."""
    return F.lit(day + dt.timedelta(days=1)).cast("timestamp")


def labelled(
    inputs: Inputs,
    catalog: Catalog,
    features_cfg: FeaturesConfig,
    cutoff: dt.date,
    horizon_days: int,
    unsupported: dict[str, str],
) -> DataFrame:
    """customer_id, the model features as of ``cutoff`` (as doubles) and ``label``, for the customers who had a
    purchase by the cut-off (module docstring). Lazy: no Spark job.

    Raises:
        TypeError: if a model feature is not numeric.
    """
    names = model_features(catalog, unsupported)
    features = build_features(inputs, cutoff, catalog, features_cfg, unsupported)
    wrong = [f.name for f in features.schema.fields if f.name in names and not isinstance(f.dataType, NumericType)]
    if wrong:
        raise TypeError(f"churn model features must be numeric; not: {wrong}")
    sale = ~F.coalesce(F.col("is_return"), F.lit(False))
    ts, end = F.col("order_ts"), _end_of(cutoff)
    # One pass over orders: who bought by the cut-off, and who bought again within the horizon (the label).
    buying = (
        inputs.orders.where(sale & (ts < _end_of(cutoff + dt.timedelta(days=horizon_days))))
        .groupBy("customer_id")
        .agg(F.max(ts < end).alias("_before"), F.max(ts >= end).alias("_after"))
        .where(F.col("_before"))
    )
    return features.join(buying, "customer_id").select(
        "customer_id",
        *[F.col(name).cast("double").alias(name) for name in names],
        F.when(F.col("_after"), 0.0).otherwise(1.0).alias("label"),
    )


def _null_handling(features: list[str], indicators: bool) -> SQLTransformer:
    """Nulls made explicit before the vector (VectorAssembler refuses nulls, and 0 would read as "just now").

    Trees (``indicators=False``): each null becomes SENTINEL, below every real value, so one split separates it.
    Logistic regression (``indicators=True``): a huge sentinel would dominate the scaling, so a null becomes 0 and
    a 0/1 ``<feature>__missing`` column joins the vector; the indicator's coefficient absorbs the missing group's
    offset, so the fill value does not bias the feature's slope. Both are stateless, so nothing is fitted here.
    """
    fill = 0.0 if indicators else SENTINEL
    value = {f: f"NANVL(CAST(`{f}` AS DOUBLE), NULL)" for f in features}  # a NaN counts as null too
    columns = [f"COALESCE({value[f]}, {fill}) AS `{f}__filled`" for f in features]
    if indicators:
        columns += [f"CAST({value[f]} IS NULL AS DOUBLE) AS `{f}__missing`" for f in features]
    return SQLTransformer(statement=f"SELECT *, {', '.join(columns)} FROM __THIS__")


def pipelines(features: list[str], cfg: ChurnConfig) -> dict[str, Pipeline]:
    """The unfitted "gbt" and "logistic" pipelines on ``features``; both output ``probability``."""
    filled = [f"{f}__filled" for f in features]
    missing = [f"{f}__missing" for f in features]
    gbt = GBTClassifier(maxIter=cfg.max_iter, maxDepth=cfg.max_depth, seed=cfg.seed, featuresCol="_vector")
    logistic = LogisticRegression(maxIter=cfg.baseline_max_iter, featuresCol="_scaled")
    return {
        "gbt": Pipeline(
            stages=[_null_handling(features, False), VectorAssembler(inputCols=filled, outputCol="_vector"), gbt]
        ),
        "logistic": Pipeline(
            stages=[
                _null_handling(features, True),
                VectorAssembler(inputCols=filled + missing, outputCol="_vector"),
                StandardScaler(inputCol="_vector", outputCol="_scaled", withMean=False, withStd=True),
                logistic,
            ]
        ),
    }


def fit(train: DataFrame, features: list[str], cfg: ChurnConfig, scratch: str) -> dict[str, PipelineModel]:
    """Both pipelines fitted on ``train`` (``labelled``'s columns), cached once so they see the same rows.

    Each fitted pipeline is saved under the folder ``scratch`` (a path Spark writes, the caller removes it) and
    read back: a fitted LogisticRegressionModel keeps its training summary, which holds the SparkSession, and
    once that session has run an Observation (the features stage does) the session no longer serialises, so
    every job that ships the model to a task fails ("Task not serializable: ObservationManager"). The saved
    model has no summary.
    """
    with cached(train) as rows:
        fitted = {name: pipeline.fit(rows) for name, pipeline in pipelines(features, cfg).items()}
    models = {}
    for name, model in fitted.items():
        path = f"{scratch.rstrip('/')}/{name}"
        model.write().overwrite().save(path)
        models[name] = PipelineModel.load(path)
    return models


def score(model: PipelineModel, rows: DataFrame) -> DataFrame:
    """customer_id and churn_probability (probability of label 1) for ``rows`` with the model's features."""
    scored = model.transform(rows)
    return scored.select("customer_id", vector_to_array("probability")[1].alias("churn_probability"))


class CalibrationBin(NamedTuple):
    bin_lower: float
    mean_predicted: float
    observed_rate: float
    rows: int


@dataclass(frozen=True)
class ChurnMetrics:
    """How a model ranks and how well its probabilities are calibrated on one labelled window."""

    rows: int
    base_rate: float
    auc: float
    log_loss: float
    lift_top_decile: float
    calibration: tuple[CalibrationBin, ...]

    @property
    def calibration_error(self) -> float:
        """Expected calibration error: the row-weighted mean |mean predicted - observed rate| over the bins."""
        return sum(b.rows * abs(b.mean_predicted - b.observed_rate) for b in self.calibration) / self.rows

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """A flat dict of floats, for mlflow.log_metrics."""
        names = ("rows", "base_rate", "auc", "log_loss", "lift_top_decile", "calibration_error")
        return {f"{prefix}{n}": float(getattr(self, n)) for n in names}


def evaluate(model: PipelineModel, test: DataFrame) -> ChurnMetrics:
    """The metrics of ``model`` on ``test`` (``labelled``'s columns). Predictions are cached and read by three
    queries: the AUC evaluator, one approxQuantile for the top-decile threshold, and one aggregation for
    everything else (counts, log loss, the top decile's churners, the calibration bins).

    Raises:
        ValueError: if ``test`` has no rows.
    """
    predicted = model.transform(test).select(
        F.col("label").cast("double").alias("y"), vector_to_array("probability")[1].alias("p")
    )
    with cached(predicted) as rows:
        quantiles = rows.approxQuantile("p", [0.9], QUANTILE_ERROR)
        if not quantiles or math.isnan(quantiles[0]):
            raise ValueError("cannot evaluate a churn model on no rows")
        evaluator = BinaryClassificationEvaluator(rawPredictionCol="p", labelCol="y", metricName="areaUnderROC")
        auc = evaluator.evaluate(rows)
        totals = rows.agg(*_aggregates(quantiles[0])).first()
    n = totals["n"]
    base_rate = totals["churners"] / n
    top_rate = totals["top_churners"] / totals["top"]
    bins = tuple(
        CalibrationBin(b / BINS, totals[f"p{b}"] / totals[f"n{b}"], totals[f"y{b}"] / totals[f"n{b}"], totals[f"n{b}"])
        for b in range(BINS)
        if totals[f"n{b}"]
    )
    return ChurnMetrics(
        rows=n,
        base_rate=base_rate,
        auc=auc,
        log_loss=-totals["log_likelihood"] / n,
        lift_top_decile=top_rate / base_rate if base_rate else float("nan"),
        calibration=bins,
    )


def _aggregates(threshold: float) -> list[Column]:
    """The aggregate columns of ``evaluate``'s one aggregation over (y, p)."""
    y, p = F.col("y"), F.col("p")
    clipped = F.least(F.greatest(p, F.lit(EPSILON)), F.lit(1 - EPSILON))
    top = p >= F.lit(threshold)
    bin_of = F.least(F.floor(p * BINS), F.lit(BINS - 1))  # p = 1.0 goes in the last bin
    per_bin = []
    for b in range(BINS):
        inside = bin_of == b
        per_bin += [
            F.count_if(inside).alias(f"n{b}"),
            F.sum(F.when(inside, p)).alias(f"p{b}"),
            F.sum(F.when(inside, y)).alias(f"y{b}"),
        ]
    return [
        F.count("*").alias("n"),
        F.sum(y).alias("churners"),
        F.sum(y * F.log(clipped) + (1 - y) * F.log(1 - clipped)).alias("log_likelihood"),
        F.count_if(top).alias("top"),
        F.sum(F.when(top, y)).alias("top_churners"),
        *per_bin,
    ]


def calibration_figure(metrics: dict[str, ChurnMetrics]) -> Figure:
    """A reliability diagram: per model, each bin's mean predicted probability against its observed churn rate,
    with the diagonal of perfect calibration. Returns a matplotlib Figure (Agg backend); the caller closes it."""
    fig, ax = plots.pyplot().subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, m in metrics.items():
        xs = [b.mean_predicted for b in m.calibration]
        ys = [b.observed_rate for b in m.calibration]
        ax.plot(xs, ys, marker="o", label=f"{name} (AUC {m.auc:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted churn probability", ylabel="observed churn rate")
    ax.set_title("Churn model calibration (reliability diagram)")
    ax.legend(loc="upper left")
    return fig
