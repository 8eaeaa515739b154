"""Per-customer CLV predictions (gold.customer_value) from fitted BG/NBD and Gamma-Gamma models, and the holdout
check of the purchase model.

The BG/NBD predictions depend on a customer only through (x, t_x, T): the driver computes p_alive, the expected
purchases over 90 and 365 days and the discounted purchases of the CLV horizon once per distinct tuple (NumPy),
and Spark joins them to the customers. The expected order value also takes the customer's m; it is the
Gamma-Gamma formula of ``clv.expected_average_order_value`` as a column expression, and the CLV is that times
the discounted purchases (``clv.discounted_purchases``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime.config import ValueConfig
from microseg.value import clv
from microseg.value.stats import Tuples

HORIZONS_DAYS = (90, 365)
FREQUENCY_BINS = 8  # the holdout check's bins of x: 0, 1, ..., 6 and "7+"


def tuple_predictions(spark: SparkSession, tuples: Tuples, bg_nbd: dict[str, float], cfg: ValueConfig) -> DataFrame:
    """One row per distinct (x, t_x, T): p_alive, expected_purchases_<d>d per ``HORIZONS_DAYS``, and
    discounted_purchases (the CLV per unit of order value), as a Spark frame made from Arrow."""
    x, t_x, T = tuples.x, tuples.t_x, tuples.T
    columns = {
        "x": pa.array(x.astype(np.int64)),
        "t_x": pa.array(t_x),
        "T": pa.array(T),
        "p_alive": pa.array(clv.p_alive(bg_nbd, x, t_x, T)),
    }
    for days in HORIZONS_DAYS:
        columns[f"expected_purchases_{days}d"] = pa.array(
            clv.expected_purchases(bg_nbd, days / cfg.unit_days, x, t_x, T)
        )
    columns["discounted_purchases"] = pa.array(
        clv.discounted_purchases(bg_nbd, x, t_x, T, cfg.clv_months, cfg.monthly_discount, cfg.unit_days)
    )
    return spark.createDataFrame(pa.table(columns))


def expected_order_value(gamma_gamma: dict[str, float]) -> Column:
    """p (gamma + m x) / (p x + q - 1), with m taken as 0 when x = 0 (``clv.expected_average_order_value``)."""
    p, q, g = (float(gamma_gamma[k]) for k in clv.GAMMA_GAMMA_PARAMS)
    x = F.col("x").cast("double")
    m = F.when(F.col("x") > 0, F.coalesce(F.col("m"), F.lit(0.0))).otherwise(F.lit(0.0))
    return F.lit(p) * (F.lit(g) + m * x) / (F.lit(p) * x + F.lit(q - 1.0))


def customer_values(stats: DataFrame, predictions: DataFrame, gamma_gamma: dict[str, float]) -> DataFrame:
    """customer_id, repeat_purchases, first_purchase, p_alive, expected purchases, expected_order_value and clv
    of each customer of ``stats`` (``stats.purchase_statistics``)."""
    value = expected_order_value(gamma_gamma)
    joined = stats.join(F.broadcast(predictions), ["x", "t_x", "T"], "left")
    return joined.select(
        "customer_id",
        F.col("x").alias("repeat_purchases"),
        "first_purchase",
        "p_alive",
        *[f"expected_purchases_{days}d" for days in HORIZONS_DAYS],
        value.alias("expected_order_value"),
        (value * F.col("discounted_purchases")).alias("clv"),
    )


def holdout_check(holdout: pd.DataFrame, holdout_days: int, unit_days: float) -> list[dict]:
    """Predicted vs actual purchase days in the holdout window per frequency bin of the calibration period.

    ``holdout`` is ``stats.holdout_tuples``' frame; the BG/NBD model is fitted on its calibration tuples
    (the data before the window) and predicts each tuple's purchases in the window. Rows: bin ("0" .. "7+"),
    customers, predicted and actual mean purchases per customer.
    """
    if holdout.empty:
        return []
    grouped = holdout.groupby(["x", "t_x", "T"], as_index=False)["weight"].sum()
    fit = clv.fit_bg_nbd(*(grouped[c].to_numpy(float) for c in ("x", "t_x", "T", "weight")))
    x, t_x, T = (holdout[c].to_numpy(float) for c in ("x", "t_x", "T"))
    weight = holdout["weight"].to_numpy(float)
    predicted = clv.expected_purchases(fit, holdout_days / unit_days, x, t_x, T)
    bins = np.minimum(x, FREQUENCY_BINS - 1).astype(int)
    rows = []
    for b in range(FREQUENCY_BINS):
        here = bins == b
        n = weight[here].sum()
        if n:
            rows.append(
                {
                    "bin": f"{b}+" if b == FREQUENCY_BINS - 1 else str(b),
                    "customers": int(n),
                    "predicted": float((predicted[here] * weight[here]).sum() / n),
                    "actual": float((holdout["actual"].to_numpy(float)[here] * weight[here]).sum() / n),
                }
            )
    return rows
