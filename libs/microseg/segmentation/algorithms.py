"""The clustering algorithms, declared once: one registry entry per algorithm, read by every stage.

An entry says how to build the algorithm's MLlib estimator (the model the registry serves) and its
in-process scikit-learn twin (what the sweep measures), what assign reports per customer for it
(the distance to the centroid, or the membership probabilities), whether it fits on the principal
components (when ``train.gmm_pca_variance`` is set), its relative cost in the sweep, its colour in
plots and the extra metrics the sweep reports for it. ``train.layers.<layer>.algorithms`` names
entries of ``ALGORITHMS``; ``register`` adds one (a test, a notebook).

The sweep ships the entries of its tasks' algorithms with its Spark job, so an algorithm registered
in the driver is known to the Python workers too; its functions must be picklable by cloudpickle
(module functions, or functions defined inside a function, which are pickled by value).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pyspark.ml import Estimator
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans

# The extra metrics a candidate can report, beyond silhouette, smallest share and stability.
EXTRA_METRICS = ("wssse", "log_likelihood", "bic")
# The model of a macro segment too small to cluster: not an algorithm, and a name no entry may take.
SINGLE_SEGMENT = "single_segment"


@dataclass(frozen=True)
class Algorithm:
    """One clustering algorithm, as every stage sees it.

    ``mllib(k, seed, max_iter, features_col, prediction_col, probability_col)`` is the MLlib estimator;
    ``sweep(k, seed, max_iter, x)`` the scikit-learn estimator fitted on ``x`` (anything with
    ``predict``); ``metrics(fitted, x, labels)`` the extra metrics of a fitted sweep estimator, a dict
    with keys among ``EXTRA_METRICS``; ``scores_by`` what assign reports per customer: the distance to
    the centroid (the MLlib model must have ``clusterCenters``) or the membership probabilities (its
    ``probability_col``); ``uses_pca`` fit on the principal components when ``train.gmm_pca_variance``
    is set; ``cost`` the relative cost of one fit, to deal the sweep's candidates; ``color`` its colour
    in plots.
    """

    name: str
    mllib: Callable[[int, int, int, str, str, str], Estimator]
    sweep: Callable[[int, int, int, np.ndarray], object]
    metrics: Callable[[object, np.ndarray, np.ndarray], dict[str, float]]
    scores_by: Literal["distance", "probability"]
    uses_pca: bool = False
    cost: float = 1.0
    color: str | None = None

    def __post_init__(self) -> None:
        if self.scores_by not in ("distance", "probability"):
            raise ValueError(f"algorithm {self.name!r}: scores_by must be 'distance' or 'probability'")


ALGORITHMS: dict[str, Algorithm] = {}

# Colours for algorithms registered without one: a fixed palette, picked by a stable hash of the name.
PALETTE = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def color(name: str) -> str:
    """The algorithm's colour in every plot: its entry's ``color``, or one of ``PALETTE`` fixed by its name."""
    entry = ALGORITHMS.get(name)
    if entry is not None and entry.color:
        return entry.color
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` to the registry; a name already taken by another entry is refused."""
    if algorithm.name == SINGLE_SEGMENT:
        raise ValueError(f"{SINGLE_SEGMENT!r} names the one-segment model, not an algorithm")
    taken = ALGORITHMS.get(algorithm.name)
    if taken is not None and taken != algorithm:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def unregister(name: str) -> None:
    ALGORITHMS.pop(name, None)


def get(algorithm: str | Algorithm) -> Algorithm:
    """The registry entry named ``algorithm`` (an entry is returned as it is: the sweep's workers get theirs shipped).

    Raises:
        ValueError: no algorithm of that name is registered.
    """
    if isinstance(algorithm, Algorithm):
        return algorithm
    try:
        return ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"unknown algorithm {algorithm!r}; known algorithms: {', '.join(ALGORITHMS)}") from None


# -- extra metrics of the sweep ----------------------------------------------------------------------------------


def wssse(fitted: object, x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Within-cluster sum of squared errors, to the fitted centres."""
    return {"wssse": float(((x - fitted.cluster_centers_[labels]) ** 2).sum())}


def likelihood(fitted: object, x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Log-likelihood of ``x`` under a fitted Gaussian mixture, and its BIC."""
    log_likelihood = float(fitted.score(x) * len(x))
    return {"log_likelihood": log_likelihood, "bic": gmm_bic(log_likelihood, fitted.n_components, x.shape[1], len(x))}


def gmm_bic(log_likelihood: float, k: int, dimensions: int, rows: int) -> float:
    """BIC of a full-covariance Gaussian mixture: parameters k*d means, k*d(d+1)/2 covariances, k-1 weights."""
    parameters = k * dimensions + k * dimensions * (dimensions + 1) / 2 + (k - 1)
    return parameters * math.log(rows) - 2 * log_likelihood


# -- the built-in algorithms -------------------------------------------------------------------------------------


def mllib_kmeans(
    k: int, seed: int, max_iter: int, features_col: str, prediction_col: str, probability_col: str
) -> Estimator:
    return KMeans(k=k, seed=seed, maxIter=max_iter, featuresCol=features_col, predictionCol=prediction_col)


def mllib_bisecting_kmeans(
    k: int, seed: int, max_iter: int, features_col: str, prediction_col: str, probability_col: str
) -> Estimator:
    return BisectingKMeans(k=k, seed=seed, maxIter=max_iter, featuresCol=features_col, predictionCol=prediction_col)


def mllib_gaussian_mixture(
    k: int, seed: int, max_iter: int, features_col: str, prediction_col: str, probability_col: str
) -> Estimator:
    return GaussianMixture(
        k=k,
        seed=seed,
        maxIter=max_iter,
        featuresCol=features_col,
        predictionCol=prediction_col,
        probabilityCol=probability_col,
    )


def sweep_kmeans(k: int, seed: int, max_iter: int, x: np.ndarray) -> object:
    from sklearn.cluster import KMeans as SkKMeans

    return SkKMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=seed).fit(x)


def sweep_bisecting_kmeans(k: int, seed: int, max_iter: int, x: np.ndarray) -> object:
    from sklearn.cluster import BisectingKMeans as SkBisectingKMeans

    return SkBisectingKMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=seed).fit(x)


def sweep_gaussian_mixture(k: int, seed: int, max_iter: int, x: np.ndarray) -> object:
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    weights, means, precisions = mllib_gmm_start(x, k, seed)
    return SkGaussianMixture(
        n_components=k,
        covariance_type="full",
        max_iter=max_iter,
        random_state=seed,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    ).fit(x)


def mllib_gmm_start(x: np.ndarray, k: int, seed: int, per_component: int = 5) -> tuple:
    """MLlib's GaussianMixture start: equal weights; each component the mean and diagonal variance of
    ``per_component`` rows drawn with replacement. Starting as MLlib does, the sweep measures the
    solutions an MLlib refit can reach, not those of scikit-learn's k-means start.
    """
    rows = x[np.random.default_rng(seed).integers(0, len(x), size=k * per_component)].reshape(k, per_component, -1)
    variances = np.maximum(rows.var(axis=1), 1e-6)
    precisions = np.stack([np.diag(1.0 / v) for v in variances])
    return np.full(k, 1.0 / k), rows.mean(axis=1), precisions


register(
    Algorithm(
        name="kmeans",
        mllib=mllib_kmeans,
        sweep=sweep_kmeans,
        metrics=wssse,
        scores_by="distance",
        cost=1.0,
        color="tab:blue",
    )
)
register(
    Algorithm(
        name="bisecting_kmeans",
        mllib=mllib_bisecting_kmeans,
        sweep=sweep_bisecting_kmeans,
        metrics=wssse,
        scores_by="distance",
        cost=2.0,
        color="tab:orange",
    )
)
register(
    Algorithm(
        name="gaussian_mixture",
        mllib=mllib_gaussian_mixture,
        sweep=sweep_gaussian_mixture,
        metrics=likelihood,
        scores_by="probability",
        uses_pca=True,
        cost=4.0,
        color="tab:green",
    )
)
