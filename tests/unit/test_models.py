"""Model pieces on tiny data: ARI, the selection rule, stable-id matching, transforms, a peer check."""

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import adjusted_rand_score

from microseg.features.catalog import load_catalog
from microseg.runtime.config import TrainConfig
from microseg.segmentation.metrics import Candidate, adjusted_rand_index
from microseg.segmentation.pipeline import (
    CLUSTER,
    SCALED,
    full_pipeline,
    preprocessing,
    single_segment_pipeline,
    transform_stage,
)
from microseg.segmentation.selection import choose, rank
from microseg.segmentation.stable_ids import match_segment_ids
from microseg.segmentation.sweep import gmm_bic

TRAIN = TrainConfig(layers={"value": {"features": ["recency_days"]}}, min_smallest_share=0.05, min_stability=0.7)


def cells(a, b):
    counts = {}
    for x, y in zip(a, b, strict=True):
        counts[(x, y)] = counts.get((x, y), 0) + 1
    return [(x, y, n) for (x, y), n in counts.items()]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
        ([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 4, 4]),  # a relabelling
        ([0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 0, 1]),
        ([0, 1, 2, 0, 1, 2, 0, 0, 1, 2], [1, 1, 2, 0, 0, 2, 0, 1, 1, 2]),
    ],
)
def test_adjusted_rand_index_matches_scikit_learn(a, b):
    assert adjusted_rand_index(cells(a, b)) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def candidate(algorithm, k, silhouette, smallest, stability):
    return Candidate(algorithm, k, silhouette, smallest, stability, sizes={})


def test_choose_best_silhouette_among_passing_candidates():
    pool = [
        candidate("kmeans", 2, 0.70, 0.40, 0.95),
        candidate("kmeans", 3, 0.90, 0.01, 0.95),  # best silhouette, but a 1% segment
        candidate("kmeans", 4, 0.85, 0.10, 0.50),  # unstable
        candidate("gaussian_mixture", 3, 0.80, 0.20, 0.90),
    ]
    chosen, rule = choose(pool, TRAIN)
    assert (chosen.algorithm, chosen.k, rule) == ("gaussian_mixture", 3, "passed thresholds")


def test_choose_ties_go_to_smaller_k_then_first_algorithm():
    pool = [candidate("kmeans", 4, 0.8, 0.2, 0.9), candidate("bisecting_kmeans", 3, 0.8, 0.2, 0.9)]
    assert choose(pool, TRAIN)[0].k == 3
    pool = [candidate("kmeans", 3, 0.8, 0.2, 0.9), candidate("bisecting_kmeans", 3, 0.8, 0.2, 0.9)]
    assert choose(pool, TRAIN)[0].algorithm == "kmeans"


def test_choose_falls_back_and_says_so():
    pool = [candidate("kmeans", 2, 0.6, 0.3, 0.2), candidate("kmeans", 3, 0.7, 0.01, 0.1)]
    chosen, rule = choose(pool, TRAIN)
    assert chosen.k == 2 and "no candidate stable enough" in rule
    chosen, rule = choose([candidate("kmeans", 3, 0.7, 0.01, 0.1)], TRAIN)
    assert chosen.k == 3 and rule == "no candidate passed: best silhouette"


def test_rank_orders_by_tier_then_silhouette():
    pool = [
        candidate("kmeans", 2, 0.70, 0.40, 0.95),
        candidate("kmeans", 3, 0.90, 0.01, 0.95),  # tier 3: tiny segment
        candidate("kmeans", 4, 0.85, 0.10, 0.50),  # tier 2: unstable
        candidate("gaussian_mixture", 3, 0.80, 0.20, 0.90),
    ]
    order = [(c.algorithm, c.k) for c, _ in rank(pool, TRAIN)]
    assert order == [("gaussian_mixture", 3), ("kmeans", 2), ("kmeans", 4), ("kmeans", 3)]


def test_gmm_bic_counts_parameters():
    # k=2, d=3: means 6, covariances 2 * 6 = 12, weights 1 -> 19 parameters.
    assert gmm_bic(-100.0, 2, 3, 1000) == pytest.approx(19 * math.log(1000) + 200)


def test_matching_keeps_ids_of_permuted_clusters_and_names_new_and_vanished():
    previous = {7: [0.0, 0.0], 3: [10.0, 10.0], 5: [0.0, 10.0]}
    new = {0: [10.2, 9.9], 1: [0.1, -0.1], 2: [0.0, 9.5], 3: [20.0, 20.0]}
    result = match_segment_ids(new, previous, next_id=8, mean=[0.0, 0.0], std=[1.0, 1.0])
    assert result["cluster_to_id"] == {0: 3, 1: 7, 2: 5, 3: 8}
    assert result["vanished"] == [] and result["next_id"] == 9
    fewer = match_segment_ids({0: [0.0, 9.0]}, previous, next_id=8, mean=[0.0, 0.0], std=[1.0, 1.0])
    assert fewer["cluster_to_id"] == {0: 5} and fewer["vanished"] == [3, 7] and fewer["next_id"] == 8


def test_matching_uses_the_new_scaler():
    # Which axis dominates the distances depends on the scaler: the pairing flips with it.
    previous = {1: [0.0, 0.0], 2: [5.0, 300.0]}
    new = {0: [4.0, 10.0], 1: [1.0, 290.0]}
    by_first_axis = match_segment_ids(new, previous, 3, mean=[0.0, 0.0], std=[1.0, 1000.0])
    by_second_axis = match_segment_ids(new, previous, 3, mean=[0.0, 0.0], std=[1000.0, 1.0])
    assert by_first_axis["cluster_to_id"] == {0: 2, 1: 1}
    assert by_second_axis["cluster_to_id"] == {0: 1, 1: 2}


def test_first_model_gets_ids_from_zero():
    result = match_segment_ids({0: [1.0], 1: [2.0]}, None, 0, mean=[0.0], std=[1.0])
    assert result == {"cluster_to_id": {0: 0, 1: 1}, "vanished": [], "distances": {}, "next_id": 2}


def test_transforms_from_the_catalog(spark, make_config):
    catalog = load_catalog(make_config())
    df = spark.createDataFrame(
        [(3, 0.9, None), (-1, 0.1, 2.0), (None, None, None)], "recency_days INT, return_rate DOUBLE, nps_latest DOUBLE"
    )
    out = transform_stage(["recency_days", "return_rate", "nps_latest"], catalog, {"return_rate": 0.5}).transform(df)
    rows = out.collect()
    assert rows[0]["recency_days__t"] == pytest.approx(math.log1p(3)) and rows[1]["recency_days__t"] == 0.0
    assert (rows[0]["return_rate__t"], rows[1]["return_rate__t"]) == (0.5, 0.1)  # clipped at the fitted limit
    assert rows[0]["nps_latest__t"] is None and rows[1]["nps_latest__t"] == 2.0  # none: unchanged, nulls kept
    # Missing stays missing through log1p and clipping, for the median imputer (not 0, not the clip limit).
    assert rows[2]["recency_days__t"] is None and rows[2]["return_rate__t"] is None


def test_single_segment_model_scores_raw_rows(spark, make_config):
    catalog = load_catalog(make_config())
    df = spark.createDataFrame([(1.0, None), (5.0, 2.0), (9.0, 4.0)], "tenure_days DOUBLE, nps_latest DOUBLE")
    model = single_segment_pipeline(["tenure_days", "nps_latest"], catalog, {}).fit(df)
    assert {r[CLUSTER] for r in model.transform(df).collect()} == {0}


def test_peer_check_mllib_kmeans_agrees_with_scikit_learn(spark, make_config):
    """Same scaled features, same k: scikit-learn's KMeans and the MLlib pipeline agree (ARI >= 0.9)."""
    catalog = load_catalog(make_config())
    rng = np.random.default_rng(3)
    centres = [(10, 2, 50), (200, 12, 800), (400, 1, 20), (60, 6, 300)]
    rows = [
        (float(abs(rng.normal(r, r * 0.1 + 3))), float(abs(rng.normal(f, 0.7))), float(abs(rng.normal(m, m * 0.15))))
        for r, f, m in centres
        for _ in range(150)
    ]
    features = ["tenure_days", "frequency_365d", "monetary_365d"]
    df = spark.createDataFrame(rows, ", ".join(f"{f} DOUBLE" for f in features))
    train = TrainConfig(layers={"v": {"features": features}})
    model = full_pipeline(preprocessing(features, catalog, {}), "kmeans", 4, train, None).fit(df)
    scored = model.transform(df).select(SCALED, CLUSTER).collect()
    matrix = np.array([r[SCALED].toArray() for r in scored])
    mllib = [r[CLUSTER] for r in scored]
    sklearn = SkKMeans(n_clusters=4, n_init=10, random_state=0).fit_predict(matrix)
    assert adjusted_rand_score(mllib, sklearn) >= 0.9
