"""The algorithm registry: a fourth algorithm, registered once, runs through the sweep and the MLlib pipeline."""

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from microseg.features.catalog import load_catalog
from microseg.runtime.config import TrainConfig
from microseg.runtime.errors import ConfigError
from microseg.runtime.runlog import RunContext
from microseg.segmentation import algorithms, sweep
from microseg.segmentation.pipeline import CLUSTER, full_pipeline, preprocessing
from microseg.segmentation.selection import Plan
from microseg.segmentation.stage import check_algorithms, run_train, sweep_tasks
from microseg.stages import run_pipeline

FEATURES = ["tenure_days", "discount_share", "spend_trend_90d"]  # catalog transform: none for all three
KEY = ("value", "all")


def cosine_kmeans() -> algorithms.Algorithm:
    """k-means with cosine distance: MLlib's KMeans(distanceMeasure="cosine"); in the sweep, scikit-learn's
    KMeans on L2-normalised rows (the same objective up to the normalisation).

    Its functions are defined in here so that cloudpickle ships them to the sweep's workers by value:
    the workers cannot import this test module.
    """

    def mllib(k, seed, max_iter, features_col, prediction_col, probability_col):
        from pyspark.ml.clustering import KMeans

        return KMeans(
            k=k, seed=seed, maxIter=max_iter, featuresCol=features_col, predictionCol=prediction_col,
            distanceMeasure="cosine",
        )  # fmt: skip

    def sweep_fit(k, seed, max_iter, x):
        from sklearn.cluster import KMeans
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        return make_pipeline(Normalizer(), KMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=seed)).fit(x)

    def no_metrics(fitted, x, labels):
        return {}

    return algorithms.Algorithm(
        name="kmeans_cosine", mllib=mllib, sweep=sweep_fit, metrics=no_metrics, scores_by="distance", cost=1.5,
        color="tab:purple",
    )  # fmt: skip


@pytest.fixture
def kmeans_cosine():
    algorithm = algorithms.register(cosine_kmeans())
    yield algorithm
    algorithms.unregister(algorithm.name)


def rays(per=150, seed=3):
    """Three directions 70-80 degrees apart, each point at a norm between 1 and 3 and a little off its ray."""
    rng = np.random.default_rng(seed)
    directions = np.array([[1.0, 0.15, 0.1], [0.1, 1.0, 0.2], [0.2, 0.1, 1.0]])
    parts = []
    for d in directions:
        u = d / np.linalg.norm(d) + rng.normal(scale=0.03, size=(per, 3))
        parts.append(u / np.linalg.norm(u, axis=1, keepdims=True) * rng.uniform(1.0, 3.0, size=(per, 1)))
    return np.vstack(parts), np.repeat(np.arange(len(directions)), per)


def test_a_registered_algorithm_is_swept_with_the_others(spark, kmeans_cosine):
    x, _ = rays()
    train = TrainConfig(layers={"value": {"features": FEATURES, "algorithms": ["kmeans", "kmeans_cosine"]}}, k_max=5)
    samples = {KEY: sweep.Sample(x)}
    tasks = sweep_tasks([Plan("value", "all", FEATURES, len(x))], samples, train)
    assert {t.algorithm for t in tasks} == {"kmeans", "kmeans_cosine"} and len(tasks) == 8
    results = sweep.run(spark, tasks, samples, train)
    cosine = {t.k: r for t, r in zip(tasks, results, strict=True) if t.algorithm == "kmeans_cosine"}
    assert sorted(cosine) == [2, 3, 4, 5]
    assert all(r["error"] is None for r in results)
    silhouette = {k: r["silhouette"] for k, r in cosine.items()}
    assert max(silhouette, key=silhouette.get) == 3 and silhouette[3] > 0.7
    assert silhouette[3] > silhouette[2] and silhouette[3] > silhouette[4]
    assert cosine[3]["stability"] > 0.95 and cosine[3]["smallest_share"] == pytest.approx(1 / 3, abs=0.02)
    # It reports no extra metric; kmeans beside it keeps its WSSSE.
    assert cosine[3]["wssse"] is None and cosine[3]["bic"] is None
    assert all(r["wssse"] is not None for t, r in zip(tasks, results, strict=True) if t.algorithm == "kmeans")
    assert algorithms.get("kmeans_cosine").cost == 1.5  # what sweep.deal weighs its candidates by


def test_a_registered_algorithm_fits_in_the_mllib_pipeline(spark, make_config, kmeans_cosine):
    x, truth = rays()
    catalog = load_catalog(make_config())
    train = TrainConfig(layers={"value": {"features": FEATURES}}, seed=11)
    df = spark.createDataFrame(pd.DataFrame(x, columns=FEATURES))
    model = full_pipeline(preprocessing(FEATURES, catalog, {}), "kmeans_cosine", 3, train, pca_k=7).fit(df)
    assert model.stages[-1].getDistanceMeasure() == "cosine"
    assert "PCAModel" not in [type(s).__name__ for s in model.stages]  # it does not use the PCA
    labels = [r[CLUSTER] for r in model.transform(df).select(CLUSTER).collect()]
    assert adjusted_rand_score(truth, labels) >= 0.9


def test_an_unknown_algorithm_is_a_config_error_naming_the_known_ones(make_config, kmeans_cosine):
    check_algorithms(make_config("train.layers.value.algorithms=[kmeans, kmeans_cosine]"))  # registered: fine
    cfg = make_config("train.layers.engagement.algorithms=[kmeans, kmeans_cosin]")
    expected = "train.layers.engagement.algorithms names unknown algorithm(s) ['kmeans_cosin']"
    with pytest.raises(ConfigError) as err:
        run_train(None, cfg, RunContext(dt.date(2025, 12, 31)))  # no Spark session: the check comes first
    assert expected in str(err.value)
    assert str(list(algorithms.ALGORITHMS)) in str(err.value) and "kmeans_cosine" in str(err.value)
    with pytest.raises(ConfigError, match="kmeans_cosin'"):
        run_pipeline(None, cfg)  # a run that includes train: before anything runs


def test_register_refuses_a_taken_name_and_unregister_forgets(kmeans_cosine):
    with pytest.raises(ValueError, match="already registered"):
        algorithms.register(dataclasses.replace(kmeans_cosine, name="kmeans"))
    algorithms.register(kmeans_cosine)  # the same entry again: no change
    algorithms.unregister("kmeans_cosine")
    assert "kmeans_cosine" not in algorithms.ALGORITHMS
    with pytest.raises(ValueError, match="unknown algorithm 'kmeans_cosine'; known algorithms: kmeans, "):
        algorithms.get("kmeans_cosine")
