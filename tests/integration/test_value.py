"""The value stage on the shared featured lake (tests/integration/conftest.py, whose stages include value):
gold.customer_value against an independent computation from silver.orders, the MLflow run and the registry,
the churn classifiers, and a rerun (skipped) and a forced refit (a second version judged against the first)."""

from __future__ import annotations

import datetime as dt

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from microseg.runtime import lake, tables
from microseg.runtime.runlog import RunContext
from microseg.segmentation import registry
from microseg.value import clv
from microseg.value.stage import run_value

pytestmark = pytest.mark.integration

AS_OF = dt.date(2025, 12, 31)


@pytest.fixture(scope="module")
def valued(spark, generated, copy_lake, make_config):
    data, _ = generated
    cfg = make_config(f"sources.root={data}", lake=copy_lake("value"))
    values = tables.read(spark, cfg, lake.CUSTOMER_VALUE).where(F.col("as_of") == F.lit(AS_OF)).toPandas()
    registry.configure(cfg)  # mlflow.artifacts and models:/ URIs below use the lake's tracking database
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    return {"cfg": cfg, "values": values.set_index("customer_id"), "client": client}


def purchase_days(spark, cfg) -> pd.DataFrame:
    """Each featured customer's purchase days up to AS_OF and their value, worked out in pandas."""
    featured = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(AS_OF))
    ids = set(featured.select("customer_id").toPandas()["customer_id"])
    orders = tables.read(spark, cfg, lake.ORDERS).select("customer_id", "order_ts", "amount_base", "is_return")
    orders = orders.toPandas()
    orders = orders[orders["customer_id"].isin(ids) & ~orders["is_return"].fillna(False).astype(bool)]
    orders = orders[orders["order_ts"] < pd.Timestamp(AS_OF + dt.timedelta(days=1))]
    orders["day"] = orders["order_ts"].dt.normalize()
    return orders.groupby(["customer_id", "day"], as_index=False)["amount_base"].sum()


def statistics(days: pd.DataFrame) -> pd.DataFrame:
    """x, t_x, T (weeks) and m per customer, as the paper defines them."""
    rows = []
    end = pd.Timestamp(AS_OF)
    for customer, group in days.sort_values("day").groupby("customer_id"):
        first, last, n = group["day"].iloc[0], group["day"].iloc[-1], len(group)
        repeat = group["amount_base"].iloc[1:]
        rows.append(
            {
                "customer_id": customer,
                "x": n - 1,
                "t_x": (last - first).days / 7.0,
                "T": (end - first).days / 7.0,
                "m": repeat.mean() if n > 1 else 0.0,
            }
        )
    return pd.DataFrame(rows).set_index("customer_id")


def champion_params(client: MlflowClient, name: str) -> tuple[object, dict]:
    champion = client.get_model_version_by_alias(name, "champion")
    return champion, mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/clv_params.json")


def test_one_row_per_featured_customer_and_null_without_purchases(spark, valued):
    cfg, values = valued["cfg"], valued["values"]
    featured = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(AS_OF))
    assert values.index.is_unique and set(values.index) == set(featured.select("customer_id").toPandas()["customer_id"])
    buyers = set(purchase_days(spark, cfg)["customer_id"])
    without = values.loc[~values.index.isin(buyers)]  # none in the generated data: everyone featured has bought
    assert without[["p_alive", "clv", "churn_probability"]].isna().all().all()
    bought = values.loc[values.index.isin(buyers)]
    assert bought[["p_alive", "clv", "expected_order_value", "churn_probability"]].notna().all().all()
    assert ((bought["p_alive"] > 0) & (bought["p_alive"] <= 1)).all() and (bought["clv"] >= 0).all()
    assert bought["churn_probability"].between(0, 1).all()


def test_values_equal_the_models_applied_to_independently_computed_statistics(spark, valued):
    cfg, values, client = valued["cfg"], valued["values"], valued["client"]
    expected = statistics(purchase_days(spark, cfg))
    champion, params = champion_params(client, "microseg-clv")
    bg, gg = params["bg_nbd"], params["gamma_gamma"]
    got = values.loc[expected.index]
    x, t_x, T, m = (expected[c].to_numpy(float) for c in ("x", "t_x", "T", "m"))
    assert (got["repeat_purchases"].to_numpy() == expected["x"].to_numpy()).all()
    np.testing.assert_allclose(got["p_alive"], clv.p_alive(bg, x, t_x, T), rtol=1e-9)
    np.testing.assert_allclose(got["expected_purchases_90d"], clv.expected_purchases(bg, 90 / 7, x, t_x, T), rtol=1e-9)
    np.testing.assert_allclose(got["expected_order_value"], clv.expected_average_order_value(gg, x, m), rtol=1e-9)
    np.testing.assert_allclose(got["clv"], clv.clv(bg, gg, x, t_x, T, m, 12, 0.01, 7.0), rtol=1e-9)
    assert set(got["clv_model_version"]) == {str(champion.version)}


def test_mlflow_run_registry_and_the_pyfunc_model(valued):
    client, values = valued["client"], valued["values"]
    champion, params = champion_params(client, "microseg-clv")
    run = client.get_run(champion.run_id)
    metrics = run.data.metrics
    for name in ("r", "alpha", "a", "b"):
        assert metrics[f"bg_nbd_{name}"] == pytest.approx(params["bg_nbd"][name])
        assert metrics[f"bg_nbd_{name}_se"] > 0
    assert metrics["bg_nbd_distinct_tuples"] >= 1 and metrics["bg_nbd_log_likelihood"] < 0
    assert metrics["bg_nbd_customers"] == values["p_alive"].notna().sum()
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert {"clv_params.json", "clv_holdout.json", "clv_holdout.png", "churn_calibration.png"} <= artifacts
    assert run.data.tags["kind"] == "value" and run.data.tags["as_of"] == str(AS_OF)
    model = mlflow.pyfunc.load_model("models:/microseg-clv@champion")
    sample = pd.DataFrame({"x": [0.0, 3.0], "t_x": [0.0, 20.0], "T": [30.0, 40.0], "m": [None, 55.0]})
    predicted = model.predict(sample)
    np.testing.assert_allclose(predicted["p_alive"], clv.p_alive(params["bg_nbd"], [0, 3], [0, 20], [30, 40]))


def test_churn_classifiers_are_evaluated_out_of_time_and_registered(valued):
    client, values = valued["client"], valued["values"]
    champion = client.get_model_version_by_alias("microseg-churn", "champion")
    run = client.get_run(champion.run_id)
    metrics, tags = run.data.metrics, run.data.tags
    for name in ("gbt", "logistic"):
        assert 0.7 < metrics[f"churn_{name}_auc"] <= 1.0 and metrics[f"churn_{name}_lift_top_decile"] > 1.0
        assert metrics[f"churn_{name}_log_loss"] > 0
    chosen = tags["churn_classifier"]
    assert metrics[f"churn_{chosen}_auc"] == max(metrics["churn_gbt_auc"], metrics["churn_logistic_auc"])
    assert tags["churn_promotion"].startswith("promoted:")
    assert set(values["churn_model_version"].dropna()) == {str(champion.version)}


def test_holdout_check_counts_every_customer_who_bought_before_the_window(spark, valued):
    cfg, client = valued["cfg"], valued["client"]
    champion, _ = champion_params(client, "microseg-clv")
    rows = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/clv_holdout.json")["rows"]
    days = purchase_days(spark, cfg)
    window = pd.Timestamp(AS_OF - dt.timedelta(days=90))
    before = days[days["day"] <= window]
    assert sum(r["customers"] for r in rows) == before["customer_id"].nunique()
    after = days[days["day"] > window]
    actual = after.groupby("customer_id").size().reindex(before["customer_id"].unique(), fill_value=0)
    total = sum(r["actual"] * r["customers"] for r in rows)
    assert total == pytest.approx(actual.sum())


def test_a_rerun_is_skipped_and_a_forced_refit_is_judged_against_the_champion(spark, valued):
    cfg, client = valued["cfg"], valued["client"]
    version = tables.version(spark, cfg, lake.CUSTOMER_VALUE)
    skipped = run_value(spark, cfg, RunContext(as_of=AS_OF))
    assert skipped.info["skipped"].startswith(f"value: skipped, as_of {AS_OF} unchanged since run ")
    assert tables.version(spark, cfg, lake.CUSTOMER_VALUE) == version
    before = valued["values"].sort_index()
    # The same rows, seed and settings: the new classifier scores the champion's AUC up to the rounding of the
    # fit's distributed sums, within the tolerance.
    churn = cfg.value.churn.model_copy(update={"promotion_tolerance": 0.01})
    tolerant = cfg.model_copy(update={"value": cfg.value.model_copy(update={"churn": churn})})
    refit = run_value(spark, tolerant, RunContext(as_of=AS_OF, retrain=True))
    models = refit.info["models"]
    assert models["clv"]["version"] == "2" and models["clv"]["champion"] == "2"
    assert models["churn"]["version"] == "2" and models["churn"]["champion"] == "2", models["churn"]
    assert "vs the champion's" in models["churn"]["decision"]
    assert str(client.get_model_version_by_alias("microseg-churn", "previous").version) == "1"
    after = tables.read(spark, cfg, lake.CUSTOMER_VALUE).where(F.col("as_of") == F.lit(AS_OF)).toPandas()
    after = after.set_index("customer_id").sort_index()
    np.testing.assert_allclose(after["clv"].fillna(-1), before["clv"].fillna(-1), rtol=1e-9)
    np.testing.assert_allclose(after["churn_probability"].fillna(-1), before["churn_probability"].fillna(-1), atol=1e-6)
