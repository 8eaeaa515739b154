"""The MLlib pipeline of a layer's model: one PipelineModel that scores raw feature rows.

Its stages: the catalog's transforms (log1p, clipping at a fitted 99th percentile) in SQL, a median
imputer, a standard scaler, a PCA for an algorithm that fits on one, then the clusterer
(``algorithms.py``). The sweep (``sweep.py``) mirrors the preprocessing in NumPy; the refit
(``refit.py``) fits this pipeline on all rows.
"""

from __future__ import annotations

from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.feature import PCA, Imputer, SQLTransformer, StandardScaler, StandardScalerModel, VectorAssembler
from pyspark.sql import DataFrame

from microseg.features.catalog import Catalog
from microseg.runtime.config import TrainConfig
from microseg.segmentation import algorithms

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
    """The MLlib estimator of ``algorithm`` (a registry name), writing ``cluster`` (and ``probability``) + suffix."""
    return algorithms.get(algorithm).mllib(k, seed, max_iter, features_col, CLUSTER + suffix, PROBABILITY + suffix)


def pca_stage(k: int) -> PCA:
    return PCA(k=k, inputCol=SCALED, outputCol=PCA_COL)


def single_segment_pipeline(features: list[str], catalog: Catalog, limits: dict[str, float]) -> Pipeline:
    """For a macro segment too small to cluster: the same preprocessing, then everyone in cluster 0."""
    stages = preprocessing(features, catalog, limits) if features else []
    return Pipeline(stages=[*stages, SQLTransformer(statement=f"SELECT *, 0 AS {CLUSTER} FROM __THIS__")])


def full_pipeline(
    stages: list[Transformer | Estimator], algorithm: str, k: int, train: TrainConfig, pca_k: int | None
) -> Pipeline:
    """``stages`` (the preprocessing), then PCA where the algorithm fits on it, then the clusterer."""
    stages = list(stages)
    features_col = SCALED
    if algorithms.get(algorithm).uses_pca and pca_k is not None:
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
