"""Feature screening: only informative features reach the sweep, and a (layer, macro) without any gets one segment.

Run on each (layer, macro)'s sweep sample, before the sweep. A feature is dropped, with its reason, when
it is null for everyone ("all null"), when it has at most one distinct value ("constant": after median
imputation it is the same number for everyone, so it cannot separate anybody), or when it duplicates a
feature listed before it in the layer's config (|Pearson correlation| >= ``DUPLICATE_CORRELATION`` on the
rows that have both; the twin is named and the first listed is kept). A (layer, macro) left with no
feature, or whose every feature is (or duplicates) one a layer listed before it segments on in the same macro
segment, is not swept: it gets one segment, and the reason says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from microseg.segmentation.selection import Plan

log = logging.getLogger(__name__)

DUPLICATE_CORRELATION = 0.99  # |Pearson r| at or above which a feature duplicates one listed before it
MIN_PAIRED_ROWS = 3  # a correlation on fewer rows having both features says nothing


@dataclass(frozen=True)
class Screened:
    """The features kept, in the layer's order, and those dropped with their reason."""

    kept: list[str]
    dropped: dict[str, str]


def _number(value: float) -> str:
    return f"{value:.6g}"


def screen(raw: pd.DataFrame, features: list[str], threshold: float = DUPLICATE_CORRELATION) -> Screened:
    """Which of ``features`` (in the layer config's order) are informative on the sample ``raw``.

    Deterministic: features are looked at in the order given, and of two twins the first is kept.
    """
    dropped: dict[str, str] = {}
    candidates = []
    for f in features:
        column = raw[f].astype(float) if f in raw else pd.Series(np.nan, index=raw.index)
        values = column.dropna()
        if values.empty:
            dropped[f] = "all null"
        elif values.nunique() == 1:
            missing = 1.0 - len(values) / len(column)
            where = f", null for {missing:.0%} of the sample" if missing > 0 else ""
            dropped[f] = f"constant ({_number(values.iloc[0])} for everyone{where})"
        else:
            candidates.append(f)
    kept: list[str] = []
    for f in candidates:
        twin = next((k for k in kept if _duplicates(raw[k].astype(float), raw[f].astype(float), threshold)), None)
        if twin is None:
            kept.append(f)
        else:
            r = raw[twin].astype(float).corr(raw[f].astype(float))
            dropped[f] = f"duplicates {twin} (Pearson r {r:+.3f} on the sample)"
    return Screened(kept, dropped)


def _duplicates(a: pd.Series, b: pd.Series, threshold: float) -> bool:
    both = a.notna() & b.notna()
    if both.sum() < MIN_PAIRED_ROWS:
        return False
    # Rows where one is null and the other not tell the two apart (imputation fills only one of them).
    if both.sum() < threshold * (a.notna() | b.notna()).sum():
        return False
    r = a[both].corr(b[both])
    return bool(np.isfinite(r) and abs(r) >= threshold)


def screen_plans(todo: list[Plan], raw: dict[str, pd.DataFrame], sweeps: dict[tuple[str, str], bool]) -> list[Plan]:
    """``todo`` with each swept plan's features screened on its macro segment's sample (``screen``).

    ``sweeps`` says which plans would be swept (``Plan.sweeps``); the others are returned as they are. A
    plan left without features, or whose features are all (or duplicate) features of plans listed before it
    for the same macro segment, gets ``single`` (the reason it has one segment) and no features.
    """
    screened: list[Plan] = []
    layer_of: dict[str, dict[str, str]] = {}  # macro -> feature kept by a layer screened before -> that layer
    for p in todo:
        if not sweeps.get(p.key) or p.macro not in raw:
            screened.append(p)
            continue
        result = screen(raw[p.macro], p.features)
        dropped = {**p.dropped, **result.dropped}
        for f, why in result.dropped.items():
            log.info("train: %s / %s: feature %s dropped: %s", p.layer, p.macro, f, why)
        single = None
        if not result.kept:
            single = "one segment: no informative feature (" + "; ".join(f"{f} {w}" for f, w in dropped.items()) + ")"
        else:
            sample, earlier = raw[p.macro], layer_of.setdefault(p.macro, {})
            # A feature that duplicates one of an earlier layer counts as that one (days_since_activity
            # equal to recency_days on a feed with orders only).
            canonical = {
                f: next((e for e in earlier if _duplicates(sample[e].astype(float), sample[f].astype(float),
                                                           DUPLICATE_CORRELATION)), None)
                for f in result.kept
            }  # fmt: skip
            if all(canonical.values()):
                layers = sorted({earlier[e] for e in canonical.values()})
                pairs = ", ".join(f if f == e else f"{f} = {e}" for f, e in canonical.items())
                single = (
                    f"skipped: every informative feature ({pairs}) is one that layer {' and '.join(layers)} "
                    "already segments on"
                )
            for f in result.kept:
                earlier.setdefault(f, p.layer)
        if single:
            log.info("train: %s / %s: %s", p.layer, p.macro, single)
        screened.append(replace(p, features=[] if single else result.kept, dropped=dropped, single=single))
    return screened
