"""The selection rule: which candidate a (layer, macro) gets, in which order refits are tried, and why."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame

from microseg.features.catalog import Catalog
from microseg.runtime.config import Config, TrainConfig
from microseg.segmentation import sweep
from microseg.segmentation.metrics import Candidate


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

    def score(c: Candidate) -> float:  # NaN (or none) ranks last: it would stop sorted from ordering at all
        return round(c.silhouette, 6) if c.silhouette is not None and not math.isnan(c.silhouette) else -math.inf

    ranked = sorted(candidates, key=lambda c: (tier(c)[0], -score(c), c.k, order[c.algorithm]))
    return [(c, tier(c)[1]) for c in ranked]


def choose(candidates: list[Candidate], train: TrainConfig) -> tuple[Candidate, str]:
    """The selection rule's choice (the first of ``rank``) and the tier of the rule that made it."""
    return rank(candidates, train)[0]


@dataclass(frozen=True)
class Plan:
    """One model to train: a layer within a macro segment, on the features somebody in it has.

    ``dropped`` names the layer's features left out and why (``screening``); ``single``, when set, says
    why the (layer, macro) gets one segment without a sweep (no informative feature, or the same
    features as another layer).
    """

    layer: str
    macro: str
    features: list[str]
    rows: int
    dropped: dict[str, str] = field(default_factory=dict, compare=False)
    single: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.layer, self.macro

    def sweeps(self, train: TrainConfig) -> bool:
        return self.rows >= train.min_macro_size and bool(self.features) and self.single is None


def score_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


@dataclass
class Sweep:
    """The outcome of a sweep: every candidate measured, the one chosen (None: a single segment) and why."""

    candidates: list[Candidate]
    chosen: Candidate | None
    rule: str
    pca_k: int | None
    rows: int
    seconds: float
    refits: list[str] = field(default_factory=list)  # candidates whose refit fell short, and by how much


def structureless(candidates: list[Candidate]) -> bool:
    """Every candidate scored silhouette -1 or none at all (NaN, or its fit failed): no cluster structure to serve."""
    return all(
        c.error is not None or c.silhouette is None or math.isnan(c.silhouette) or c.silhouette <= -1.0 + 1e-9
        for c in candidates
    )


NO_STRUCTURE = "one segment: no informative structure (every candidate scored silhouette -1 or none)"


def choice(p: Plan, candidates: list[Candidate], sample: sweep.Sample | None, train: TrainConfig) -> Sweep:
    """The selection rule applied to one (layer, macro)'s measured candidates (none: a single segment).

    A (layer, macro) whose every candidate scored silhouette -1 (or NaN) gets one segment too
    (``NO_STRUCTURE``): a champion must show some structure.
    """
    seconds = sum(c.seconds or 0.0 for c in candidates)
    if not candidates:
        if p.single:
            rule = p.single
        elif p.features:
            rule = f"one segment: {p.rows} rows < min_macro_size {train.min_macro_size}"
        else:
            rule = "one segment: no features"
        return Sweep([], None, rule, None, p.rows, seconds)
    if structureless(candidates):
        return Sweep(candidates, None, NO_STRUCTURE, sample.pca_k, len(sample.scaled), seconds)
    chosen, rule = choose(candidates, train)
    return Sweep(candidates, chosen, rule, sample.pca_k, len(sample.scaled), seconds)


@dataclass(frozen=True)
class ModelInputs:
    """What training one (layer, macro) model works from: its plan, every row of its macro segment
    (cached by the stage), its sweep sample as read and as preprocessed, the catalog, the config and
    the tags of its MLflow runs."""

    plan: Plan
    rows: DataFrame
    raw: pd.DataFrame | None
    sample: sweep.Sample | None
    catalog: Catalog
    cfg: Config
    tags: dict

    @property
    def train(self) -> TrainConfig:
        return self.cfg.train

    @property
    def title(self) -> str:
        return f"{self.plan.layer} / {self.plan.macro}"
