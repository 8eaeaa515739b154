"""Stable segment ids: a retrained model's clusters keep the ids of the champion's nearest clusters."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from microseg.segmentation.refit import Final
from microseg.segmentation.registry import load_run_json


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


def stable_ids(champion: object | None, final: Final, features: list[str]) -> tuple[dict, bool]:
    """The cluster -> stable id mapping against the champion, and whether the model equals the champion."""
    previous = load_run_json(champion.run_id, "centroids.json") if champion else None
    previous_ids = load_run_json(champion.run_id, "segment_ids.json") if champion else None
    comparable = bool(previous) and previous.get("features") == features
    mapping = match_segment_ids(
        final.centroids,
        {int(i): c for i, c in previous["centroids"].items()} if comparable else None,
        previous_ids["next_id"] if previous_ids else 0,
        final.scaler_mean,
        final.scaler_std,
    )
    if champion is not None and not comparable and previous_ids:
        # Other features: no shared space to match in, so every old id vanishes.
        mapping["vanished"] = sorted(int(i) for i in previous_ids["cluster_to_id"].values())
    mapping["centroids"] = {str(mapping["cluster_to_id"][c]): v for c, v in sorted(final.centroids.items())}
    same = comparable and same_centroids(previous["centroids"], mapping["centroids"])
    return mapping, same


def same_centroids(a: dict, b: dict, tolerance: float = 1e-9) -> bool:
    return a.keys() == b.keys() and all(
        len(a[i]) == len(b[i]) and all(abs(x - y) <= tolerance for x, y in zip(a[i], b[i], strict=True)) for i in a
    )
