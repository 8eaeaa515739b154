"""The in-process sweep: MLlib-equivalent preprocessing and silhouette, candidate metrics, the one-job sweep."""

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import Pipeline
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.linalg import Vectors
from sklearn.metrics import adjusted_rand_score

from microseg.features.catalog import load_catalog
from microseg.runtime.config import TrainConfig
from microseg.segmentation import algorithms, sweep
from microseg.segmentation.pipeline import CLUSTER, SCALED, full_pipeline, preprocessing

FEATURES = ["recency_days", "frequency_365d", "return_rate"]  # transforms: none, log1p, clip_p99
PARAMS = {"seed": 7, "max_iter": 40, "stability_fraction": 0.8, "silhouette_sample": 5000}


def blobs(centres, per, spread, seed=1):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(c, spread, size=(per, len(c))) for c in centres])
    return x, np.repeat(np.arange(len(centres)), per)


def test_silhouette_by_hand_on_four_points():
    # Clusters {0, 1} and {10, 12} on a line, squared distances.
    # Point 0: a = 1, b = (100 + 144) / 2 = 122 -> 1 - 1/122. Point 1: a = 1, b = (81 + 121) / 2 = 101.
    # Point 10: a = 4, b = (100 + 81) / 2 = 90.5. Point 12: a = 4, b = (144 + 121) / 2 = 132.5.
    x = np.array([[0.0], [1.0], [10.0], [12.0]])
    expected = np.mean([1 - 1 / 122, 1 - 1 / 101, 1 - 4 / 90.5, 1 - 4 / 132.5])
    assert sweep.silhouette(x, np.array([0, 0, 1, 1])) == pytest.approx(expected, abs=1e-12)
    assert sweep.silhouette(x, np.array([0, 0, 0, 0])) == -1.0
    # A point alone in its cluster scores 0: clusters {0}, {1, 10, 12}.
    alone = sweep.silhouette(x, np.array([0, 1, 1, 1]))
    b1, a1 = 1.0, (81 + 121) / 2
    b10, a10 = 100.0, (81 + 4) / 2
    b12, a12 = 144.0, (121 + 4) / 2
    by_hand = (0 + (b1 / a1 - 1) + (1 - a10 / b10) + (1 - a12 / b12)) / 4
    assert alone == pytest.approx(by_hand, abs=1e-12)


def test_silhouette_equals_mllib_clustering_evaluator(spark):
    x, _ = blobs([(0, 0, 0), (4, 1, 0), (0, 5, 3), (2, 2, 8)], 150, 1.5)
    df = spark.createDataFrame([(Vectors.dense(row),) for row in x], [SCALED])
    predicted = KMeans(k=4, seed=3, featuresCol=SCALED, predictionCol=CLUSTER).fit(df).transform(df)
    mllib = ClusteringEvaluator(featuresCol=SCALED, predictionCol=CLUSTER).evaluate(predicted)
    rows = predicted.select(SCALED, CLUSTER).collect()
    ours = sweep.silhouette(np.array([r[SCALED].toArray() for r in rows]), np.array([r[CLUSTER] for r in rows]))
    assert ours == pytest.approx(mllib, abs=1e-9)


def test_preprocess_equals_the_mllib_pipeline(spark, make_config):
    catalog = load_catalog(make_config())
    rng = np.random.default_rng(5)
    raw = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 400, 300).astype(float),
            "frequency_365d": rng.poisson(3, 300).astype(float),
            "return_rate": rng.random(300),
        }
    )
    raw.loc[::7, "frequency_365d"] = np.nan  # imputed with the median
    raw.loc[::11, "return_rate"] = np.nan
    ours = sweep.preprocess(raw, FEATURES, catalog)
    limit = float(np.nanquantile(raw["return_rate"], 0.99, method="inverted_cdf"))
    rows = [tuple(None if math.isnan(v) else float(v) for v in r) for r in raw.itertuples(index=False)]
    df = spark.createDataFrame(rows, ", ".join(f"{f} DOUBLE" for f in FEATURES))
    model = Pipeline(stages=preprocessing(FEATURES, catalog, {"return_rate": limit})).fit(df)
    mllib = np.array([r[SCALED].toArray() for r in model.transform(df).select(SCALED).collect()])
    # MLlib's median is approximate (relative error 0.001): compare the columns without missing values exactly.
    np.testing.assert_allclose(ours[:, 0], mllib[:, 0], atol=1e-9)
    assert np.abs(ours - mllib).max() < 0.05


def test_constant_and_empty_columns_scale_to_zero():
    catalog_free = pd.DataFrame({"a": [1.0, 1.0, 1.0], "b": [np.nan, np.nan, np.nan]})

    class NoTransform:
        transform = "none"

    class Catalog:
        def feature(self, _):
            return NoTransform()

    assert (sweep.preprocess(catalog_free, ["a", "b"], Catalog()) == 0).all()


def test_pca_keeps_the_fewest_components_for_the_variance():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(500, 2)) * [5.0, 1.0]
    x = np.column_stack([base, base[:, 0] * 0.001 + rng.normal(scale=1e-3, size=500)])
    # Variances about 25, 1 and 0: the first component keeps 25/26 = 96%, two keep all but ~0.
    assert sweep.pca(x, 0.95).shape == (500, 1)
    assert sweep.pca(x, 0.99).shape == (500, 2)


@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting_kmeans", "gaussian_mixture"])
def test_evaluate_finds_planted_blobs_with_every_metric(algorithm):
    x, truth = blobs([(0, 0), (10, 0), (0, 10)], 200, 1.0)
    result = sweep.evaluate(x, algorithm, 3, PARAMS)
    assert result["silhouette"] > 0.8 and result["stability"] > 0.95
    assert result["smallest_share"] == pytest.approx(1 / 3, abs=0.02)
    assert sum(int(v) for v in __import__("json").loads(result["sizes"]).values()) == 600
    if algorithm == "gaussian_mixture":
        # Parameters for k=3, d=2: 6 means, 9 covariances, 2 weights = 17.
        assert result["bic"] == pytest.approx(17 * math.log(600) - 2 * result["log_likelihood"])
    else:
        labels = algorithms.get(algorithm).sweep(3, PARAMS["seed"], 40, x).predict(x)
        assert adjusted_rand_score(labels, truth) >= 0.99
        centres = np.array([x[labels == c].mean(axis=0) for c in range(3)])
        assert result["wssse"] == pytest.approx(((x - centres[labels]) ** 2).sum(), rel=1e-6)


def test_deal_spreads_cost_and_keeps_every_task():
    samples = {("v", "a"): sweep.Sample(np.zeros((100, 2)))}
    tasks = [sweep.Task(("v", "a"), algorithm, k) for algorithm in algorithms.ALGORITHMS for k in range(2, 7)]
    dealt = sweep.deal(tasks, samples, 2)
    assert sorted(i for slot in dealt for i in slot) == list(range(len(tasks)))
    loads = [sum(algorithms.get(tasks[i].algorithm).cost * tasks[i].k for i in slot) for slot in dealt]
    largest = max(a.cost for a in algorithms.ALGORITHMS.values()) * 6
    assert abs(loads[0] - loads[1]) <= largest  # within the largest single task


def test_sweep_runs_every_candidate_in_one_spark_job(spark):
    x, _ = blobs([(0, 0), (8, 0), (0, 8), (8, 8)], 100, 1.0)
    samples = {("value", "all"): sweep.Sample(x, x[:, :1]), ("engagement", "all"): sweep.Sample(x[:, ::-1])}
    tasks = [sweep.Task(("value", "all"), a, k) for a in ("kmeans", "gaussian_mixture") for k in (2, 3, 4)]
    tasks += [sweep.Task(("engagement", "all"), "kmeans", k) for k in (3, 4)]
    train = TrainConfig(layers={"value": {"features": ["recency_days"]}}, seed=7)
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("sweep-test", "sweep test")
    try:
        results = sweep.run(spark, tasks, samples, train)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert len(tracker.getJobIdsForGroup("sweep-test")) == 1
    assert [r["task"] for r in results] == list(range(len(tasks)))
    by_task = {(t.key[0], t.algorithm, t.k): r for t, r in zip(tasks, results, strict=True)}
    # Same answer as in-process evaluation: the job only moves the work.
    local = sweep.evaluate(x, "kmeans", 4, {**PARAMS, "silhouette_sample": train.silhouette_sample})
    assert by_task[("value", "kmeans", 4)]["silhouette"] == pytest.approx(local["silhouette"], abs=1e-12)
    assert by_task[("value", "gaussian_mixture", 2)]["bic"] is not None
    assert by_task[("value", "gaussian_mixture", 2)]["wssse"] is None
    assert all(r["error"] is None and r["seconds"] > 0 for r in results)


def test_mllib_refit_agrees_with_the_scikit_learn_candidate(spark, make_config):
    """The candidate chosen in scikit-learn and its MLlib refit label the sample alike (ARI >= 0.9).

    GaussianMixture is left out: MLlib's starts from a random split and can settle elsewhere, which
    is why the train stage checks every refit's agreement (min_refit_agreement) before taking it.
    """
    catalog = load_catalog(make_config())
    features = ["tenure_days", "frequency_365d", "monetary_365d"]  # none, log1p, log1p
    rng = np.random.default_rng(3)
    centres = [(10, 2, 50), (200, 12, 800), (400, 1, 20), (60, 6, 300)]
    raw = pd.DataFrame(
        [
            (abs(rng.normal(r, r * 0.1 + 3)), abs(rng.normal(f, 0.7)), abs(rng.normal(m, m * 0.15)))
            for r, f, m in centres
            for _ in range(150)
        ],
        columns=features,
    )
    train = TrainConfig(layers={"v": {"features": features}}, seed=11)
    for algorithm in ("kmeans", "bisecting_kmeans"):
        scaled = sweep.preprocess(raw, features, catalog)
        space = sweep.pca(scaled, 0.95) if algorithm == "gaussian_mixture" else scaled
        ours = algorithms.get(algorithm).sweep(4, train.seed, train.max_iter, space).predict(space)
        pca_k = space.shape[1] if algorithm == "gaussian_mixture" else None
        df = spark.createDataFrame(raw)
        model = full_pipeline(preprocessing(features, catalog, {}), algorithm, 4, train, pca_k).fit(df)
        mllib = [r[CLUSTER] for r in model.transform(df).select(CLUSTER).collect()]
        assert adjusted_rand_score(ours, mllib) >= 0.9, algorithm
