"""Feature screening before the sweep: constant, all-null and duplicate features dropped with a reason; a (layer, macro)
with nothing informative left, or with another layer's features, or with no structure, gets one segment."""

import numpy as np
import pandas as pd

from microseg.runtime.config import TrainConfig
from microseg.segmentation import screening, sweep
from microseg.segmentation.metrics import Candidate
from microseg.segmentation.selection import NO_STRUCTURE, Plan, choice
from microseg.segmentation.stage import screened, summary_lines

TRAIN = TrainConfig(layers={"value": {"features": ["recency_days"]}}, min_macro_size=5)


def orders_only(n=40, seed=3):
    """A sample as an orders-only feed gives it: one channel, no discounts, tenure = days since first purchase."""
    rng = np.random.default_rng(seed)
    first = rng.integers(30, 900, n).astype(float)
    recency = rng.integers(1, 400, n).astype(float)
    return pd.DataFrame(
        {
            "recency_days": recency,
            "monetary_365d": rng.gamma(2.0, 50.0, n),
            "tenure_days": first,
            "days_since_first_purchase": first,
            "discount_share": np.nan,
            "channel_share_web": np.where(np.arange(n) % 3 == 0, np.nan, 1.0),
            "channel_share_store": np.nan,
            "days_since_activity": recency,
        }
    )


def test_constant_all_null_and_duplicate_features_are_dropped_with_their_reason():
    raw = orders_only()
    features = ["recency_days", "tenure_days", "monetary_365d", "days_since_first_purchase", "discount_share",
                "channel_share_web"]  # fmt: skip
    result = screening.screen(raw, features)
    assert result.kept == ["recency_days", "tenure_days", "monetary_365d"]
    assert result.dropped["discount_share"] == "all null"
    assert result.dropped["channel_share_web"] == "constant (1 for everyone, null for 35% of the sample)"
    assert result.dropped["days_since_first_purchase"] == "duplicates tenure_days (Pearson r +1.000 on the sample)"


def test_the_twin_kept_is_the_one_listed_first():
    raw = orders_only()
    result = screening.screen(raw, ["days_since_first_purchase", "recency_days", "tenure_days"])
    assert result.kept == ["days_since_first_purchase", "recency_days"]
    assert result.dropped == {"tenure_days": "duplicates days_since_first_purchase (Pearson r +1.000 on the sample)"}


def test_a_negated_twin_is_a_duplicate_and_a_loosely_correlated_feature_is_not():
    raw = orders_only()
    raw["negated"] = -2.0 * raw["recency_days"] + 5
    raw["noisy"] = raw["recency_days"] + np.random.default_rng(1).normal(0, 60, len(raw))
    result = screening.screen(raw, ["recency_days", "negated", "noisy"])
    assert result.kept == ["recency_days", "noisy"]
    assert result.dropped["negated"].startswith("duplicates recency_days (Pearson r -1.000")


def test_a_layer_without_informative_features_gets_one_segment_and_is_not_swept():
    raw = {"churned": orders_only()}
    plan = Plan("preference", "churned", ["channel_share_web", "channel_share_store"], 40)
    (screened_plan,) = screened([plan], raw, TRAIN)
    assert screened_plan.features == []
    assert not screened_plan.sweeps(TRAIN)
    assert screened_plan.single == (
        "one segment: no informative feature (channel_share_web constant (1 for everyone, null for 35% of the "
        "sample); channel_share_store all null)"
    )
    swept = choice(screened_plan, [], None, TRAIN)
    assert swept.chosen is None and swept.rule == screened_plan.single


def test_a_layer_with_the_same_features_as_an_earlier_layer_is_skipped():
    raw = {"active": orders_only()}
    value = Plan("value", "active", ["recency_days", "discount_share"], 40)
    engagement = Plan("engagement", "active", ["days_since_activity", "channel_share_store"], 40)
    other_macro = {"churned": orders_only(seed=4), **raw}
    first, second = screened([value, engagement], other_macro, TRAIN)
    assert first.features == ["recency_days"] and first.single is None
    assert second.features == []
    assert second.single == (
        "skipped: every informative feature (days_since_activity = recency_days) is one that layer value already "
        "segments on"
    )
    # The same layer in another macro segment is screened on its own.
    (alone,) = screened([Plan("engagement", "churned", ["days_since_activity"], 40)], other_macro, TRAIN)
    assert alone.features == ["days_since_activity"] and alone.single is None


def test_a_layer_whose_features_are_a_subset_of_an_earlier_layers_is_skipped():
    """The orders-only case of issue 16: engagement reduced to days_since_activity, a twin of recency_days, while
    the value layer segments on recency_days and more."""
    raw = {"churned": orders_only()}
    value = Plan("value", "churned", ["recency_days", "frequency_365d"], 40)
    engagement = Plan("engagement", "churned", ["days_since_activity", "email_open_rate"], 40)
    first, second = screened([value, engagement], raw, TRAIN)
    assert first.single is None and "recency_days" in first.features
    assert second.features == [] and second.single.startswith("skipped: every informative feature")
    assert "days_since_activity = recency_days" in second.single and "layer value" in second.single


def test_plans_not_swept_are_left_as_they_are():
    small = Plan("value", "new", ["recency_days", "discount_share"], 3)
    assert screened([small], {"new": orders_only()}, TRAIN) == [small]


def _candidate(k, silhouette, error=None):
    return Candidate("kmeans", k, silhouette, 0.5, 1.0, {0: 10, 1: 10}, error=error)


def test_every_candidate_at_silhouette_minus_one_means_one_segment():
    plan = Plan("preference", "active", ["channel_share_web"], 40)
    sample = sweep.Sample(np.zeros((40, 1)))
    flat = [_candidate(2, -1.0), _candidate(3, float("nan")), _candidate(4, -1.0, error="ValueError()")]
    swept = choice(plan, flat, sample, TRAIN)
    assert swept.chosen is None
    assert swept.rule == NO_STRUCTURE
    assert len(swept.candidates) == 3  # still logged
    # One candidate with structure is enough to choose it.
    swept = choice(plan, [*flat, _candidate(5, 0.12)], sample, TRAIN)
    assert (swept.chosen.k, swept.chosen.silhouette) == (5, 0.12)


def test_summary_lines_show_k1_reasons_and_dropped_features():
    model = {
        "layer": "preference", "macro": "churned", "algorithm": "single_segment", "k": 1, "silhouette": None,
        "sizes": {"0": 40}, "version": "1", "promotion": "promoted", "candidates": [], "sweep_rows": 40,
        "sweep_seconds": 0.0, "fit_seconds": 1.0, "rows": 40,
        "single_segment_reason": "one segment: no informative feature (channel_share_store all null)",
        "dropped_features": {"channel_share_store": "all null"},
    }  # fmt: skip
    lines = summary_lines({"models": [model]})
    assert lines[2] == "    k=1: one segment: no informative feature (channel_share_store all null)"
    assert lines[3] == "    dropped channel_share_store: all null"


def test_a_single_segment_equals_a_single_segment_champion(monkeypatch):
    """A k=1 model reads no feature: against a champion that is the same single segment it is 'the same'
    (promote then keeps the champion and registers no new version)."""
    from types import SimpleNamespace

    from microseg.segmentation import stable_ids as ids
    from microseg.segmentation.refit import Final

    artifacts = {
        "centroids.json": {"features": [], "centroids": {"4": []}},
        "segment_ids.json": {"cluster_to_id": {"0": 4}, "next_id": 5},
    }
    monkeypatch.setattr(ids, "load_run_json", lambda run_id, path: artifacts[path])
    final = Final(None, "single_segment", 1, {0: 40}, None, {0: []}, [], [], 40, 0.0)
    mapping, same = ids.stable_ids(SimpleNamespace(run_id="r1"), final, [])
    assert same and mapping["cluster_to_id"] == {0: 4}
    # A champion with clusters over features is not the same: its ids vanish, the segment gets a new one.
    artifacts["centroids.json"] = {"features": ["recency_days"], "centroids": {"4": [1.0], "5": [9.0]}}
    artifacts["segment_ids.json"] = {"cluster_to_id": {"0": 4, "1": 5}, "next_id": 6}
    mapping, same = ids.stable_ids(SimpleNamespace(run_id="r1"), final, [])
    assert not same and mapping["cluster_to_id"] == {0: 6} and mapping["vanished"] == [4, 5]
