"""The refit: the chosen candidate fitted with MLlib on all rows (or fit_sample), checked against the sweep."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from microseg.runtime.config import TrainConfig
from microseg.segmentation import algorithms, sweep
from microseg.segmentation.algorithms import SINGLE_SEGMENT
from microseg.segmentation.metrics import Candidate
from microseg.segmentation.pipeline import (
    CLUSTER,
    RAW,
    clip_limits,
    clustering_column,
    full_pipeline,
    preprocessing,
    scaler_of,
    single_segment_pipeline,
)
from microseg.segmentation.selection import ModelInputs, Sweep, rank, score_text


@dataclass
class Final:
    """The chosen candidate refitted, with its predictions' facts."""

    model: PipelineModel
    algorithm: str
    k: int
    sizes: dict[int, int]
    silhouette: float | None
    centroids: dict[int, list[float]]
    scaler_mean: list[float]
    scaler_std: list[float]
    fit_rows: int
    seconds: float
    agreement: float | None = None  # ARI between the refit and its sweep candidate on the sweep sample


def fit_final(m: ModelInputs, swept: Sweep) -> Final:
    """The chosen candidate (or one segment) refitted on all rows, or on fit_sample of them.

    The refit must be the model the sweep measured: its silhouette within ``refit_tolerance`` of the
    sweep's, and its labels of the sweep sample in agreement with the candidate's (adjusted Rand
    index at least ``min_refit_agreement``; MLlib's GaussianMixture starts from a random split and
    can land in another solution). Otherwise the next candidate in the rule's order is refitted, at
    most ``max_refits``; ``swept`` records the choice made and the refits that fell short.
    """
    started = time.perf_counter()
    train, n, features = m.train, m.plan.rows, m.plan.features
    sampled = bool(train.fit_sample and n > train.fit_sample)
    fit_rows = m.rows.sample(fraction=train.fit_sample / n, seed=train.seed) if sampled else m.rows
    limits = clip_limits(fit_rows, features, m.catalog)
    if swept.chosen is None:
        pipeline = single_segment_pipeline(features, m.catalog, limits)
        final = _refit(m, fit_rows, pipeline, SINGLE_SEGMENT, 1)
    else:
        tried = []
        prepare = preprocessing(features, m.catalog, limits)
        for candidate, rule in rank(swept.candidates, train)[: train.max_refits]:
            pipeline = full_pipeline(prepare, candidate.algorithm, candidate.k, train, swept.pca_k)
            final = _refit(m, fit_rows, pipeline, candidate.algorithm, candidate.k)
            final.agreement = refit_agreement(m, final.model, candidate)
            tried.append((final, candidate, rule))
            if refit_holds(final, candidate, train):
                break
            swept.refits.append(
                f"{candidate.algorithm} k={candidate.k}: silhouette {candidate.silhouette:.3f} in the sweep, "
                f"{score_text(final.silhouette)} refitted, agreement {final.agreement:.3f}"
            )
        # None held: the refit closest to its candidate.
        final, swept.chosen, swept.rule = next(
            (t for t in tried if refit_holds(t[0], t[1], train)), max(tried, key=lambda t: t[0].agreement)
        )
        if swept.refits:
            swept.rule += f"; refits that fell short: {'; '.join(swept.refits)}"
    final.fit_rows = fit_rows.count() if sampled else n
    final.seconds = time.perf_counter() - started
    return final


def refit_holds(final: Final, candidate: Candidate, train: TrainConfig) -> bool:
    """The refit is the model the sweep measured: silhouette and labels both close to the candidate's.

    The labels must agree (adjusted Rand index) at least as well as the candidate agrees with a
    reseeded copy of itself, less ``refit_tolerance``, and at most ``min_refit_agreement`` is asked.
    """
    close = final.silhouette is not None and final.silhouette >= candidate.silhouette - train.refit_tolerance
    required = min(train.min_refit_agreement, candidate.stability - train.refit_tolerance)
    return close and final.agreement is not None and final.agreement >= required


def _refit(m: ModelInputs, fit_rows: DataFrame, pipeline: Pipeline, algorithm: str, k: int) -> Final:
    rows, n, features, train = m.rows, m.plan.rows, m.plan.features, m.train
    model = pipeline.fit(fit_rows)
    predictions = model.transform(rows)
    # Sizes and centroids (mean of the transformed, imputed, unscaled vector) in one aggregation.
    aggregates = [F.count("*").alias("size")]
    if features:
        aggregates.append(Summarizer.mean(F.col(RAW)).alias("mean"))
    per_cluster = predictions.groupBy(CLUSTER).agg(*aggregates).collect()
    score = sample_silhouette(predictions, clustering_column(model), n, train) if k > 1 else None
    scaler = scaler_of(model)
    return Final(
        model=model,
        algorithm=algorithm,
        k=k,
        sizes={int(r[CLUSTER]): int(r["size"]) for r in per_cluster},
        silhouette=score,
        centroids={int(r[CLUSTER]): [float(v) for v in r["mean"].toArray()] for r in per_cluster}
        if features
        else {0: []},
        scaler_mean=list(map(float, scaler.mean.toArray())) if scaler else [],
        scaler_std=list(map(float, scaler.std.toArray())) if scaler else [],
        fit_rows=0,
        seconds=0.0,
    )


def sample_silhouette(predictions: DataFrame, features_col: str, rows: int, train: TrainConfig) -> float:
    """MLlib's silhouette (squared Euclidean) of scored rows, on at most ``silhouette_sample`` of them: one job."""
    fraction = min(1.0, train.silhouette_sample / max(rows, 1))
    sampled = predictions.sample(fraction=fraction, seed=train.seed) if fraction < 1 else predictions
    frame = sampled.select(vector_to_array(F.col(features_col)).alias("x"), CLUSTER).toPandas()
    if frame.empty:
        return -1.0
    return sweep.silhouette(np.stack(frame["x"].to_numpy()), frame[CLUSTER].to_numpy())


def refit_agreement(m: ModelInputs, model: PipelineModel, chosen: Candidate) -> float:
    """Adjusted Rand index between the MLlib refit and its scikit-learn candidate, both labelling the sweep sample."""
    from sklearn.metrics import adjusted_rand_score

    spark, raw, features, sample, train = m.rows.sparkSession, m.raw, m.plan.features, m.sample, m.train
    algorithm = algorithms.get(chosen.algorithm)
    space = sample.space(algorithm)
    candidate = algorithm.sweep(chosen.k, train.seed, train.max_iter, space).predict(space)
    schema = T.StructType(
        [T.StructField("_row", T.IntegerType()), *[T.StructField(f, T.DoubleType()) for f in features]]
    )
    values = raw[features].astype(object).where(raw[features].notna(), None).itertuples(index=True, name=None)
    scored = model.transform(spark.createDataFrame(list(values), schema)).select("_row", CLUSTER).collect()
    refit = np.empty(len(raw), dtype=int)
    for r in scored:
        refit[r["_row"]] = r[CLUSTER]
    return float(adjusted_rand_score(candidate, refit))
