"""Clustering models: the MLlib pipeline of a layer, the candidate metrics, the selection rule and stable ids.

A layer's model is one PipelineModel that scores raw feature rows: the catalog's transforms
(log1p, clipping at a fitted 99th percentile) in SQL, a median imputer, a standard scaler, for
GaussianMixture an optional PCA, then the clusterer. The train stage (``training.py``) sweeps
algorithms and k on a sample in scikit-learn (``sweep.py``), chooses by the rule in ``choose``,
refits the choice with this pipeline on all rows and keeps segment ids stable across retrains by
``match_segment_ids``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.feature import PCA, Imputer, SQLTransformer, StandardScaler, StandardScalerModel, VectorAssembler
from pyspark.sql import DataFrame
from scipy.optimize import linear_sum_assignment

from microseg.catalog import Catalog
from microseg.config import TrainConfig

ALL = "all"  # the macro segment of models trained over every customer (train.by_macro: false)
RAW, SCALED, PCA_COL, CLUSTER, PROBABILITY = "features_raw", "features_scaled", "features_pca", "cluster", "probability"


def model_name(layer: str, macro: str) -> str:
    return f"microseg-{layer}-{macro.replace('_', '-')}"


def segment_id(layer: str, macro: str, stable_id: int) -> str:
    return f"{layer}-{macro}-{stable_id}"


# -- the pipeline ---------------------------------------------------------------------------------------


def clip_limits(df: DataFrame, features: list[str], catalog: Catalog) -> dict[str, float]:
    """The 99th percentile of each clip_p99 feature in ``df`` (one approxQuantile pass)."""
    clipped = [f for f in features if catalog.feature(f).transform == "clip_p99"]
    if not clipped:
        return {}
    limits = df.approxQuantile(clipped, [0.99], 0.001)
    return {f: (q[0] if q else None) for f, q in zip(clipped, limits, strict=True) if q}


def transform_stage(features: list[str], catalog: Catalog, limits: dict[str, float]) -> SQLTransformer:
    """The catalog's per-feature transforms, as SQL over the raw columns (doubles, nulls kept)."""
    expressions = []
    for name in features:
        x = f"CAST(`{name}` AS DOUBLE)"
        transform = catalog.feature(name).transform
        # IF, not GREATEST/LEAST: those skip nulls, and a missing value must stay missing for the imputer.
        if transform == "log1p":
            x = f"LOG1P(IF({x} < 0D, 0D, {x}))"
        elif transform == "clip_p99" and limits.get(name) is not None:
            limit = f"{float(limits[name])!r}D"
            x = f"IF({x} > {limit}, {limit}, {x})"
        expressions.append(f"{x} AS `{name}__t`")
    return SQLTransformer(statement=f"SELECT *, {', '.join(expressions)} FROM __THIS__")


def preprocessing(features: list[str], catalog: Catalog, limits: dict[str, float]) -> list[Transformer | Estimator]:
    """Transform -> median imputer -> assembler -> scaler (unit variance): raw rows to the scaled vector."""
    transformed = [f"{f}__t" for f in features]
    imputed = [f"{f}__i" for f in features]
    return [
        transform_stage(features, catalog, limits),
        Imputer(inputCols=transformed, outputCols=imputed, strategy="median"),
        VectorAssembler(inputCols=imputed, outputCol=RAW),
        # Not centred: MLlib's BisectingKMeans splits a cluster by perturbing its centre in proportion
        # to the centre's norm, so a root centre at the origin never splits (one cluster for any k).
        # Every distance, and so every clustering and metric, is the same with or without the shift.
        StandardScaler(inputCol=RAW, outputCol=SCALED, withMean=False, withStd=True),
    ]


def clusterer(
    algorithm: str, k: int, seed: int, max_iter: int, features_col: str = SCALED, suffix: str = ""
) -> Estimator:
    prediction = CLUSTER + suffix
    if algorithm == "kmeans":
        return KMeans(k=k, seed=seed, maxIter=max_iter, featuresCol=features_col, predictionCol=prediction)
    if algorithm == "bisecting_kmeans":
        return BisectingKMeans(k=k, seed=seed, maxIter=max_iter, featuresCol=features_col, predictionCol=prediction)
    if algorithm == "gaussian_mixture":
        return GaussianMixture(
            k=k,
            seed=seed,
            maxIter=max_iter,
            featuresCol=features_col,
            predictionCol=prediction,
            probabilityCol=PROBABILITY + suffix,
        )
    raise ValueError(f"unknown algorithm {algorithm!r}; use kmeans, bisecting_kmeans or gaussian_mixture")


def pca_stage(k: int) -> PCA:
    return PCA(k=k, inputCol=SCALED, outputCol=PCA_COL)


def single_segment_pipeline(features: list[str], catalog: Catalog, limits: dict[str, float]) -> Pipeline:
    """For a macro segment too small to cluster: the same preprocessing, then everyone in cluster 0."""
    stages = preprocessing(features, catalog, limits) if features else []
    return Pipeline(stages=[*stages, SQLTransformer(statement=f"SELECT *, 0 AS {CLUSTER} FROM __THIS__")])


def full_pipeline(
    features: list[str], catalog: Catalog, limits: dict[str, float], algorithm: str, k: int, train: TrainConfig,
    pca_k: int | None,
) -> Pipeline:  # fmt: skip
    stages = preprocessing(features, catalog, limits)
    features_col = SCALED
    if algorithm == "gaussian_mixture" and pca_k is not None:
        stages.append(pca_stage(pca_k))
        features_col = PCA_COL
    stages.append(clusterer(algorithm, k, train.seed, train.max_iter, features_col))
    return Pipeline(stages=stages)


def scaler_of(model: PipelineModel) -> StandardScalerModel | None:
    return next((s for s in model.stages if isinstance(s, StandardScalerModel)), None)


def clustering_column(model: PipelineModel) -> str:
    """The vector column the model's clusterer reads (the scaled features, or their PCA)."""
    last = model.stages[-1]
    return last.getFeaturesCol() if last.hasParam("featuresCol") else SCALED


# -- metrics ----------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    algorithm: str
    k: int
    silhouette: float
    smallest_share: float
    stability: float
    sizes: dict[int, int]
    wssse: float | None = None
    log_likelihood: float | None = None
    bic: float | None = None
    run_id: str | None = None
    seconds: float | None = None  # fit, stability fit and metrics
    error: str | None = None  # why the candidate could not be fitted

    def metrics(self) -> dict[str, float]:
        values = {
            "silhouette": self.silhouette,
            "smallest_share": self.smallest_share,
            "stability_ari": self.stability,
            "wssse": self.wssse,
            "log_likelihood": self.log_likelihood,
            "bic": self.bic,
        }
        return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def adjusted_rand_index(contingency: Iterable[tuple[object, object, int]]) -> float:
    """Hubert and Arabie's adjusted Rand index from (label_a, label_b, count) cells."""
    cells = [(a, b, int(n)) for a, b, n in contingency]
    total = sum(n for _, _, n in cells)
    if total < 2:
        return 1.0
    rows: dict[object, int] = {}
    cols: dict[object, int] = {}
    for a, b, n in cells:
        rows[a] = rows.get(a, 0) + n
        cols[b] = cols.get(b, 0) + n
    index = sum(math.comb(n, 2) for _, _, n in cells)
    sum_rows = sum(math.comb(n, 2) for n in rows.values())
    sum_cols = sum(math.comb(n, 2) for n in cols.values())
    expected = sum_rows * sum_cols / math.comb(total, 2)
    maximum = (sum_rows + sum_cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def ari_between(df: DataFrame, a: str, b: str) -> float:
    return adjusted_rand_index((r[a], r[b], r["count"]) for r in df.groupBy(a, b).count().collect())


def passes(candidate: Candidate, train: TrainConfig) -> bool:
    return candidate.smallest_share >= train.min_smallest_share and candidate.stability >= train.min_stability


def rank(candidates: list[Candidate], train: TrainConfig) -> list[tuple[Candidate, str]]:
    """The candidates in the order of the selection rule, each with the tier of the rule it falls in.

    First the candidates that pass (smallest share and stability thresholds), then those with a
    large enough smallest segment only, then the rest; within a tier, the best silhouette first,
    ties to the smaller k, then to the algorithm listed first.
    """
    order = {c.algorithm: i for i, c in reversed(list(enumerate(candidates)))}

    def tier(c: Candidate) -> tuple[int, str]:
        if passes(c, train):
            return 0, "passed thresholds"
        if c.smallest_share >= train.min_smallest_share:
            return 1, "no candidate stable enough: best silhouette with large enough segments"
        return 2, "no candidate passed: best silhouette"

    ranked = sorted(candidates, key=lambda c: (tier(c)[0], -round(c.silhouette, 6), c.k, order[c.algorithm]))
    return [(c, tier(c)[1]) for c in ranked]


def choose(candidates: list[Candidate], train: TrainConfig) -> tuple[Candidate, str]:
    """The selection rule's choice (the first of ``rank``) and the tier of the rule that made it."""
    return rank(candidates, train)[0]


# -- centroids and stable ids -------------------------------------------------------------------------------


def match_segment_ids(
    new: dict[int, list[float]],
    previous: dict[int, list[float]] | None,
    next_id: int,
    mean: list[float],
    std: list[float],
) -> dict:
    """Give the new clusters the stable ids of the previous champion's nearest clusters.

    Both sets of centroids are scaled with the new model's scaler (the shared space) and paired by
    the optimal assignment of Euclidean distances (scipy's linear_sum_assignment). Matched clusters
    keep their ids; unmatched new clusters get fresh ids from ``next_id``; unmatched previous ids are
    recorded as vanished.

    Returns: {"cluster_to_id": {cluster: id}, "vanished": [ids], "distances": {id: d}, "next_id": n}.
    """
    scale = np.array([s if s > 0 else 1.0 for s in std])
    shift = np.array(mean)
    new_clusters = sorted(new)
    result: dict = {"cluster_to_id": {}, "vanished": [], "distances": {}, "next_id": next_id}
    if previous:
        old_ids = sorted(previous)
        a = (np.array([new[c] for c in new_clusters]) - shift) / scale
        b = (np.array([previous[i] for i in old_ids]) - shift) / scale
        cost = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            result["cluster_to_id"][new_clusters[r]] = old_ids[c]
            result["distances"][old_ids[c]] = round(float(cost[r, c]), 6)
        result["vanished"] = [i for i in old_ids if i not in set(result["cluster_to_id"].values())]
    for cluster in new_clusters:
        if cluster not in result["cluster_to_id"]:
            result["cluster_to_id"][cluster] = result["next_id"]
            result["next_id"] += 1
    return result
