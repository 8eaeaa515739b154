"""The model sweep: every (layer, macro, algorithm, k) candidate measured in-process on a bounded sample.

A sweep sample is small (at most ``train.sweep_sample`` rows per macro segment), so fitting its
candidates with MLlib would pay a Spark job per iteration for a few milliseconds of arithmetic.
Instead each sample is preprocessed in NumPy exactly as the MLlib pipeline does it (the catalog's
transforms, median imputation, standard scaling, PCA for the algorithms that use it), and every candidate is
fitted with scikit-learn inside one Spark job: one task per slot, each taking its share of the
candidates, with BLAS/OpenMP held to one thread per task. The chosen candidate is refitted with
MLlib on all rows by the train stage; that model is what the registry serves.

The silhouette is MLlib's ``ClusteringEvaluator`` one (squared Euclidean), computed exactly in
O(n·k·d) from per-cluster sums rather than from all pairwise distances.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from microseg.features.catalog import Catalog
from microseg.runtime import sparkops
from microseg.runtime.config import TrainConfig
from microseg.segmentation import algorithms
from microseg.segmentation.algorithms import Algorithm
from microseg.segmentation.algorithms import gmm_bic as gmm_bic  # re-exported: its home was here

RESULT_SCHEMA = (
    "task INT, silhouette DOUBLE, smallest_share DOUBLE, stability DOUBLE, wssse DOUBLE, log_likelihood DOUBLE, "
    "bic DOUBLE, sizes STRING, seconds DOUBLE, error STRING"
)


@dataclass(frozen=True)
class Sample:
    """One (layer, macro) sweep sample, preprocessed: the scaled matrix and, for algorithms that use it, its PCA."""

    scaled: np.ndarray
    pca: np.ndarray | None = None

    def space(self, algorithm: Algorithm) -> np.ndarray:
        """The matrix ``algorithm`` fits on: the PCA if it uses one and the sample has it, else the scaled matrix."""
        return self.pca if algorithm.uses_pca and self.pca is not None else self.scaled

    @property
    def pca_k(self) -> int | None:
        return None if self.pca is None else self.pca.shape[1]


@dataclass(frozen=True)
class Task:
    key: tuple[str, str]  # (layer, macro)
    algorithm: str
    k: int


# -- preprocessing, as pipeline.preprocessing does it in MLlib ------------------------------------


def preprocess(raw: pd.DataFrame, features: list[str], catalog: Catalog) -> np.ndarray:
    """Raw feature rows to the scaled matrix: transforms, median imputation, standardisation.

    Mirrors ``pipeline.preprocessing``: log1p of the non-negative part, clipping at the 99th
    percentile, the median for missing values (0 if a column has none), then division by the sample
    standard deviation without centring (a constant column becomes 0, as in MLlib's StandardScaler).
    """
    x = raw[features].to_numpy(dtype=float, na_value=np.nan)
    for j, name in enumerate(features):
        transform = catalog.feature(name).transform
        column = x[:, j]
        if transform == "log1p":
            x[:, j] = np.log1p(np.maximum(column, 0.0))
        elif transform == "clip_p99" and not np.isnan(column).all():
            x[:, j] = np.minimum(column, np.nanquantile(column, 0.99, method="inverted_cdf"))
    has_values = ~np.isnan(x).all(axis=0)
    medians = np.zeros(x.shape[1])
    medians[has_values] = np.nanmedian(x[:, has_values], axis=0)
    x = np.where(np.isnan(x), medians, x)
    std = x.std(axis=0, ddof=1) if len(x) > 1 else np.zeros(x.shape[1])
    return np.where(std > 0, x / np.where(std > 0, std, 1.0), 0.0)


def pca(scaled: np.ndarray, variance: float) -> np.ndarray:
    """The projection on the fewest principal components that keep ``variance`` of the variance.

    Like MLlib's PCA: components from the covariance matrix, projection without centring.
    """
    values, vectors = np.linalg.eigh(np.cov(scaled, rowvar=False).reshape(scaled.shape[1], scaled.shape[1]))
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    explained = np.cumsum(values) / values.sum() if values.sum() > 0 else np.ones_like(values)
    k = int(min(len(values), np.searchsorted(explained, variance - 1e-9) + 1))
    return scaled @ vectors[:, :k]


# -- metrics ------------------------------------------------------------------------------------------------------


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """MLlib's silhouette with squared Euclidean distance, exactly, in O(n·k·d); -1 for a single cluster.

    The mean squared distance from a point to a cluster is |x|² - 2·x·mean + mean(|y|²) over the
    cluster; to its own cluster it is scaled by n/(n-1) to leave the point out, and a point alone
    in its cluster scores 0 (as ``ClusteringEvaluator`` does).
    """
    clusters, index = np.unique(labels, return_inverse=True)
    if len(clusters) < 2:
        return -1.0
    counts = np.bincount(index).astype(float)
    onehot = np.zeros((len(x), len(clusters)))
    onehot[np.arange(len(x)), index] = 1.0
    norms = np.einsum("ij,ij->i", x, x)
    means = (onehot.T @ x) / counts[:, None]
    mean_norms = (onehot.T @ norms) / counts
    distance = norms[:, None] - 2.0 * (x @ means.T) + mean_norms[None, :]
    rows = np.arange(len(x))
    own_size = counts[index]
    own = distance[rows, index] * own_size / np.maximum(own_size - 1.0, 1.0)
    distance[rows, index] = np.inf
    nearest = distance.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(own < nearest, 1.0 - own / nearest, np.where(own > nearest, nearest / own - 1.0, 0.0))
    return float(np.where(own_size > 1, score, 0.0).mean())


def evaluate(x: np.ndarray, algorithm: str | Algorithm, k: int, params: dict) -> dict:
    """Fit one candidate and measure it: silhouette, smallest share, stability ARI and the algorithm's extra metrics
    (``Algorithm.metrics``: WSSSE for the k-means family, log-likelihood and BIC for GaussianMixture).

    Stability is the adjusted Rand index between this fit and one with seed+1 on a
    ``stability_fraction`` subsample, both labelling the whole sample.
    """
    from sklearn.metrics import adjusted_rand_score

    entry = algorithms.get(algorithm)
    seed, max_iter = params["seed"], params["max_iter"]
    model = entry.sweep(k, seed, max_iter, x)
    labels = model.predict(x)
    subsample = np.random.default_rng(seed + 1).random(len(x)) < params["stability_fraction"]
    other = entry.sweep(k, seed + 1, max_iter, x[subsample]).predict(x)
    sizes = np.bincount(labels, minlength=k)
    scored = np.random.default_rng(seed).permutation(len(x))[: params["silhouette_sample"]]
    result = {
        "silhouette": silhouette(x[scored], labels[scored]),
        "smallest_share": float(sizes.min() / len(x)),
        "stability": float(adjusted_rand_score(labels, other)),
        "sizes": json.dumps({str(c): int(n) for c, n in enumerate(sizes) if n > 0}),
    }
    return {**result, **entry.metrics(model, x, labels)}


def evaluate_task(task: Task, sample: Sample, params: dict, algorithm: Algorithm | None = None) -> dict:
    """``evaluate`` on the task's space (the PCA for an algorithm that uses it), timed; errors are recorded.

    ``algorithm`` is the task's registry entry (in a Spark worker, the one shipped with the job).
    """
    started = time.perf_counter()
    try:
        entry = algorithms.get(algorithm or task.algorithm)
        result = {"error": None, **evaluate(sample.space(entry), entry, task.k, params)}
    except Exception as exc:  # one candidate that cannot be fitted must not sink the sweep: it is recorded
        result = {"silhouette": -1.0, "smallest_share": 0.0, "stability": 0.0, "sizes": "{}", "error": repr(exc)}
    return {**result, "seconds": time.perf_counter() - started}


# -- the sweep as one Spark job ----------------------------------------------------------------------------------


def deal(tasks: list[Task], samples: dict[tuple[str, str], Sample], slots: int) -> list[list[int]]:
    """Task indexes dealt over ``slots`` by estimated cost, longest first, each to the least loaded slot."""
    # Relative cost of a fit (the registry's Algorithm.cost), to deal the candidates evenly, longest first.
    cost = [algorithms.get(t.algorithm).cost * t.k * len(samples[t.key].scaled) for t in tasks]
    heap = [(0.0, slot) for slot in range(slots)]
    dealt: list[list[int]] = [[] for _ in range(slots)]
    for i in sorted(range(len(tasks)), key=lambda i: (-cost[i], i)):
        load, slot = heapq.heappop(heap)
        dealt[slot].append(i)
        heapq.heappush(heap, (load + cost[i], slot))
    return [sorted(d) for d in dealt if d]


def run(
    spark: SparkSession, tasks: list[Task], samples: dict[tuple[str, str], Sample], train: TrainConfig
) -> list[dict]:
    """Evaluate every task in one Spark job; returns one result dict per task, in the tasks' order."""
    if not tasks:
        return []
    params = {
        "seed": train.seed,
        "max_iter": train.max_iter,
        "stability_fraction": train.stability_fraction,
        "silhouette_sample": train.silhouette_sample,
    }
    # The registry entries travel in the job's closure (cloudpickle), not the broadcast (pickle): an algorithm
    # registered in this process only is known to the workers, and its functions may be pickled by value.
    entries = {name: algorithms.get(name) for name in dict.fromkeys(t.algorithm for t in tasks)}
    dealt = deal(tasks, samples, min(len(tasks), sparkops.default_parallelism(spark)))
    data = sparkops.shared_value(spark, {"tasks": tasks, "samples": samples, "dealt": dealt})

    def evaluate_slots(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import sklearn.cluster
        import sklearn.mixture  # noqa: F401  imported before the clock starts: not a candidate's cost
        from threadpoolctl import threadpool_limits

        shared = data()
        with threadpool_limits(limits=1):  # two tasks on two cores must not each start a BLAS/OpenMP pool
            for batch in batches:
                rows = []
                for slot in batch["id"]:
                    for i in shared["dealt"][slot]:
                        task = shared["tasks"][i]
                        result = evaluate_task(task, shared["samples"][task.key], params, entries[task.algorithm])
                        rows.append({"task": i, **result})
                yield pd.DataFrame(rows, columns=[c.split()[0] for c in RESULT_SCHEMA.split(", ")])

    slots = spark.range(0, len(dealt), 1, len(dealt))
    results = slots.mapInPandas(evaluate_slots, RESULT_SCHEMA).toPandas()
    by_task = {int(r["task"]): r for r in results.to_dict("records")}
    return [_clean(by_task[i]) for i in range(len(tasks))]


def _clean(row: dict) -> dict:
    """NaN (a metric the algorithm has not) to None, sizes to a dict."""
    out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    out["sizes"] = {int(c): int(n) for c, n in json.loads(out["sizes"] or "{}").items()}
    return out
