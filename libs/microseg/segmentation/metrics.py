"""Candidate metrics: what the sweep measured of one (algorithm, k), and the adjusted Rand index."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pyspark.sql import DataFrame


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
