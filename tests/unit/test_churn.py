"""Churn propensity on tiny hand-built data: the label's edges, leakage, and the models on a planted signal,
each expected value worked out here (by hand or with NumPy) rather than read back from the code under test."""

import datetime as dt
import math

import numpy as np
import pytest
from pyspark.sql import Observation
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from microseg.features.catalog import load_catalog
from microseg.features.stage import Inputs, build_features, unsupported_features
from microseg.value.churn import (
    CalibrationBin,
    ChurnMetrics,
    calibration_figure,
    evaluate,
    fit,
    labelled,
    model_features,
    score,
)

D = dt.date
CUTOFF = D(2025, 6, 30)
HORIZON = 90  # the horizon's last day is 2025-09-28
CUSTOMERS = "customer_id STRING, signup_date DATE, consent_profiling BOOLEAN"
ORDERS = (
    "customer_id STRING, order_id STRING, order_ts TIMESTAMP, amount_base DOUBLE, discount_base DOUBLE, "
    "is_return BOOLEAN, channel STRING, offer_code STRING"
)
WEB = "customer_id STRING, session_id STRING, event_ts TIMESTAMP, event_type STRING"


def ts(day, hour=12, minute=0, second=0):
    return dt.datetime.combine(day, dt.time(hour, minute, second))


def order(customer, n, when, returned=False, amount=40.0):
    return (customer, f"{customer}-{n}", when, amount, 0.0, returned, "web", None)


@pytest.fixture(scope="module")
def cfg(make_config):
    return make_config("value.churn.max_iter=5", "value.churn.max_depth=3", "value.churn.baseline_max_iter=10")


@pytest.fixture(scope="module")
def catalog(cfg):
    return load_catalog(cfg)


@pytest.fixture(scope="module")
def edges(spark):
    """One customer per edge of the label and of who is labelled at all."""
    signup = D(2024, 1, 1)
    customers = spark.createDataFrame(
        [(c, signup, c != "no_consent") for c in ("edge", "late", "on_cut", "ret", "keep", "after", "ret_only")]
        + [("no_consent", signup, False), ("new", D(2025, 7, 1), True)],
        CUSTOMERS,
    )
    orders = spark.createDataFrame(
        [
            order("edge", 1, ts(D(2025, 1, 10))),
            order("edge", 2, ts(D(2025, 9, 28), 23, 59, 59)),  # the last instant of the horizon: kept
            order("late", 1, ts(D(2025, 1, 10))),
            order("late", 2, ts(D(2025, 9, 29), 0)),  # the first instant after the horizon: churned
            order("on_cut", 1, ts(CUTOFF, 23, 59, 59)),  # on the cut-off day: a feature-period purchase; churned
            order("ret", 1, ts(D(2025, 2, 1))),
            order("ret", 2, ts(D(2025, 7, 15)), returned=True),  # only a return in the horizon: churned
            order("keep", 1, ts(D(2025, 6, 1))),
            order("keep", 2, ts(D(2025, 7, 1), 0)),  # the first instant after the cut-off day: in the horizon
            order("after", 1, ts(D(2025, 7, 5))),  # first purchase after the cut-off: not labelled
            order("ret_only", 1, ts(D(2025, 5, 5)), returned=True),  # never bought, only returned: not labelled
            order("no_consent", 1, ts(D(2025, 5, 5))),  # no profiling consent: no features, not labelled
            order("new", 1, ts(D(2025, 7, 2))),
        ],
        ORDERS,
    )
    web = spark.createDataFrame(
        [("edge", "s1", ts(D(2025, 6, 1)), "page_view"), ("keep", "s2", ts(D(2025, 6, 20)), "add_to_cart")], WEB
    )
    return Inputs(customers, orders, web_events=web)


@pytest.fixture(scope="module")
def unsupported(edges, catalog):
    return unsupported_features(edges, catalog)


def test_model_features_are_the_supported_numeric_catalog_features(spark, edges, catalog, cfg, unsupported):
    names = model_features(catalog, unsupported)
    assert "email_open_rate" not in names and "nps_latest" not in names  # no such source
    assert "offer_redemption_rate" not in names  # orders.offer_code is never filled
    assert {"recency_days", "frequency_365d", "web_sessions_90d", "cart_abandonment_rate"} <= set(names)
    assert "macro_segment" not in names and names == [n for n in catalog.names if n in set(names)]
    types = {f.name: f.dataType for f in build_features(edges, CUTOFF, catalog, cfg.features, unsupported).schema}
    assert all(isinstance(types[n], NumericType) for n in names)


@pytest.fixture(scope="module")
def edge_rows(edges, catalog, cfg, unsupported):
    rows = labelled(edges, catalog, cfg.features, CUTOFF, HORIZON, unsupported).collect()
    return {r["customer_id"]: r.asDict() for r in rows}


def without_label(row):
    return {k: v for k, v in row.items() if k != "label"}


def test_label_edges(edge_rows):
    rows = edge_rows
    assert {c: r["label"] for c, r in rows.items()} == {
        "edge": 0.0,
        "late": 1.0,
        "on_cut": 1.0,
        "ret": 1.0,
        "keep": 0.0,
    }
    assert rows["on_cut"]["recency_days"] == 0.0 and rows["on_cut"]["frequency_30d"] == 1.0
    assert rows["edge"]["recency_days"] == 171.0  # 2025-01-10 -> 2025-06-30; the September order is unseen
    assert rows["keep"]["cart_abandonment_rate"] == 1.0  # the 2025-07-01 order is after the cut-off: unseen


def test_events_after_the_cutoff_change_only_the_label(spark, edges, catalog, cfg, unsupported, edge_rows):
    first_after = ts(CUTOFF + dt.timedelta(days=1), 0)
    later = [
        order(c, f"x{n}{returned}", when, returned)
        for n, (c, when) in enumerate(
            (c, when) for c in ("edge", "late", "on_cut", "ret", "keep") for when in (first_after, ts(D(2025, 8, 1)))
        )
        for returned in (False, True)
    ]
    extra = Inputs(
        edges.customers,
        edges.orders.unionByName(spark.createDataFrame(later, ORDERS)),
        web_events=edges.web_events.unionByName(spark.createDataFrame([("late", "s9", first_after, "page_view")], WEB)),
    )
    rows = labelled(extra, catalog, cfg.features, CUTOFF, HORIZON, unsupported).collect()
    after = {r["customer_id"]: r.asDict() for r in rows}
    assert set(after) == set(edge_rows)
    assert {c: without_label(r) for c, r in after.items()} == {c: without_label(r) for c, r in edge_rows.items()}
    assert {r["label"] for r in after.values()} == {0.0}  # everyone bought in the horizon now
    assert edge_rows["late"]["label"] == 1.0


# -- a planted signal: regular buyers keep buying, lapsed ones (a stop date before the cut-off) do not ---------

TRAIN_CUTOFF, TEST_CUTOFF = D(2025, 3, 31), D(2025, 8, 31)


@pytest.fixture(scope="module")
def planted(spark):
    rng = np.random.default_rng(7)
    customers, orders = [], []
    for i in range(240):
        cid = f"c{i:03d}"
        start = D(2024, 3, 1) + dt.timedelta(days=int(rng.integers(0, 60)))
        loyal = rng.random() < 0.4
        stop = D(2025, 12, 31) if loyal else D(2024, 9, 1) + dt.timedelta(days=int(rng.integers(0, 450)))
        customers.append((cid, start, True))
        day, n = start, 0
        while day <= stop:
            n += 1
            amount = float(round(rng.lognormal(3.5, 0.5), 2))
            orders.append(order(cid, n, ts(day, int(rng.integers(0, 24))), amount=amount))
            if rng.random() < 0.05:
                orders.append(order(cid, f"r{n}", ts(day + dt.timedelta(days=3)), returned=True, amount=amount))
            day += dt.timedelta(days=int(rng.integers(8, 25)))
    return Inputs(spark.createDataFrame(customers, CUSTOMERS), spark.createDataFrame(orders, ORDERS))


@pytest.fixture(scope="module")
def windows(planted, catalog, cfg):
    unsupported = unsupported_features(planted, catalog)
    features = model_features(catalog, unsupported)
    train, test = (
        labelled(planted, catalog, cfg.features, cutoff, cfg.value.churn.horizon_days, unsupported).cache()
        for cutoff in (TRAIN_CUTOFF, TEST_CUTOFF)
    )
    yield features, train, test
    train.unpersist()
    test.unpersist()


@pytest.fixture(scope="module")
def fitted(spark, windows, cfg, tmp_path_factory):
    # An Observation run in the session first, as the features stage does before the value stage: a model that
    # kept its training summary (which holds the session) could then not be shipped to a task.
    spark.range(3).observe(Observation(), F.count("*").alias("n")).collect()
    features, train, _ = windows
    return fit(train, features, cfg.value.churn, str(tmp_path_factory.mktemp("churn-scratch")))


@pytest.fixture(scope="module")
def results(fitted, windows):
    """Per model: its metrics on the test window and the collected (p, y) of its scores."""
    _, _, test = windows
    out = {}
    for name, model in fitted.items():
        scored = score(model, test).join(test.select("customer_id", "label"), "customer_id").collect()
        p = np.array([r["churn_probability"] for r in scored])
        y = np.array([r["label"] for r in scored])
        out[name] = (evaluate(model, test), p, y)
    return out


def mann_whitney_auc(p, y):
    """P(p of a churner > p of a stayer), ties counting one half."""
    pos, neg = p[y == 1], p[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def test_the_windows_have_both_labels_and_null_features(windows):
    features, train, test = windows
    for frame in (train, test):
        labels = [r["label"] for r in frame.select("label").collect()]
        assert 50 < len(labels) <= 240 and 0.15 < np.mean(labels) < 0.85
    # a customer with fewer than three purchases has no interpurchase spread; lapsed ones have no 180-day trend
    assert train.where(F.col("spend_trend_90d").isNull()).count() > 0
    assert "spend_trend_90d" in features


@pytest.mark.parametrize("name", ["gbt", "logistic"])
def test_metrics_on_a_planted_signal(results, windows, name):
    metrics, p, y = results[name]
    assert len(p) == windows[2].count() == metrics.rows
    assert ((p >= 0) & (p <= 1)).all()
    assert metrics.auc > 0.8
    assert metrics.auc == pytest.approx(mann_whitney_auc(p, y), abs=1e-9)
    assert metrics.base_rate == pytest.approx(y.mean())
    clipped = np.clip(p, 1e-15, 1 - 1e-15)
    assert metrics.log_loss == pytest.approx(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)), rel=1e-9)


@pytest.mark.parametrize("name", ["gbt", "logistic"])
def test_lift_of_the_top_decile(results, name):
    metrics, p, y = results[name]
    # approxQuantile's threshold has rank 0.9 n within ceil(1e-3 n) (+1 for rounding): any such threshold's lift.
    order = np.sort(p)
    target, slack = math.ceil(0.9 * len(p)), math.ceil(1e-3 * len(p)) + 1
    candidates = {order[k - 1] for k in range(max(1, target - slack), min(len(p), target + slack) + 1)}
    lifts = [y[p >= q].mean() / y.mean() for q in candidates]
    assert any(metrics.lift_top_decile == pytest.approx(lift) for lift in lifts)
    assert metrics.lift_top_decile > 1.0


@pytest.mark.parametrize("name", ["gbt", "logistic"])
def test_calibration_bins(results, name):
    metrics, p, y = results[name]
    bins = np.minimum(np.floor(p * 10), 9).astype(int)
    expected = [(b / 10, p[bins == b].mean(), y[bins == b].mean(), int((bins == b).sum())) for b in np.unique(bins)]
    assert sum(b.rows for b in metrics.calibration) == metrics.rows
    assert len(metrics.calibration) == len(expected)
    for got, want in zip(metrics.calibration, expected, strict=True):
        assert got.bin_lower == pytest.approx(want[0]) and got.rows == want[3]
        assert got.mean_predicted == pytest.approx(want[1]) and got.observed_rate == pytest.approx(want[2])
    flat = metrics.as_metrics(f"{name}_")
    assert flat[f"{name}_rows"] == float(len(p)) and all(isinstance(v, float) for v in flat.values())
    ece = sum(w[3] * abs(w[1] - w[2]) for w in expected) / len(p)
    assert flat[f"{name}_calibration_error"] == pytest.approx(ece)


def test_a_null_feature_is_not_read_as_zero(spark, cfg, tmp_path):
    """Churners have no value of x (null, or NaN), stayers x = 0 or 5: with nulls filled as 0 the churners and the
    stayers at 0 would be one group."""
    rows = [(f"n{i}", None if i % 4 else float("nan"), float(i % 3), 1.0) for i in range(20)]
    rows += [(f"z{i}", 0.0 if i % 2 else 5.0, float(i % 3), 0.0) for i in range(20)]
    frame = spark.createDataFrame(rows, "customer_id STRING, x DOUBLE, noise DOUBLE, label DOUBLE")
    models = fit(frame, ["x", "noise"], cfg.value.churn, str(tmp_path / "scratch"))
    for name, model in models.items():
        p = {r["customer_id"]: r["churn_probability"] for r in score(model, frame).collect()}
        churners = [p[f"n{i}"] for i in range(20)]
        stayers = [p[f"z{i}"] for i in range(1, 20, 2)]  # x = 0
        assert min(churners) > 0.5 > max(stayers), name


def test_calibration_figure_has_a_line_per_model_and_the_diagonal():
    import matplotlib.pyplot as plt

    def metrics(bins):
        return ChurnMetrics(10, 0.5, 0.9, 0.4, 1.8, tuple(CalibrationBin(*b) for b in bins))

    fig = calibration_figure(
        {"gbt": metrics([(0.1, 0.15, 0.2, 5), (0.8, 0.85, 0.8, 5)]), "logistic": metrics([(0.4, 0.45, 0.5, 10)])}
    )
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 3
    assert list(lines[0].get_xdata()) == [0, 1] and list(lines[0].get_ydata()) == [0, 1]
    assert list(lines[1].get_xdata()) == [0.15, 0.85] and list(lines[1].get_ydata()) == [0.2, 0.8]
    assert list(lines[2].get_xdata()) == [0.45]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert {t.get_text().split()[0] for t in ax.get_legend().get_texts()} >= {"gbt", "logistic"}
    plt.close(fig)


def test_evaluate_refuses_no_rows(fitted, windows):
    with pytest.raises(ValueError, match="no rows"):
        evaluate(fitted["gbt"], windows[2].limit(0))
