"""The Spark side of the value models: per-customer purchase statistics from orders, and their aggregation to the
distinct tuples the fits of ``microseg.value.clv`` take, collected to the driver as NumPy arrays.

A purchase is a *purchase day*: a customer's non-return orders of one calendar day (in the session time zone)
count as one purchase whose value is their summed ``amount_base``. Orders on the ``as_of`` date count (as of is
inclusive: orders with ``order_ts`` before the day after ``as_of``).

Per customer, with days counted from the first purchase day d0 and divided by ``unit_days``:

- ``x``: purchase days after d0 (repeat purchases);
- ``t_x``: last purchase day - d0 (0 when x = 0);
- ``T``: ``as_of`` - d0;
- ``m``: mean value of the repeat purchase days, the first day's value excluded (as the Gamma-Gamma model
  wants: the first purchase is the one that made the customer, not a draw of their repeat spend); null when
  x = 0;
- ``first_purchase``: d0.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


class Tuples(NamedTuple):
    """Distinct (x, t_x, T) and how many customers share each."""

    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    weight: np.ndarray


class SpendPairs(NamedTuple):
    """Distinct (x, m) of the customers with x > 0 and m > 0, and how many customers share each."""

    x: np.ndarray
    m: np.ndarray
    weight: np.ndarray


def purchase_days(orders: DataFrame, until: dt.date, after: dt.date | None = None) -> DataFrame:
    """customer_id, day, value: the purchase days of ``orders`` (silver.orders' shape) on or before ``until`` (and
    after ``after`` when given), each with the summed non-return ``amount_base`` of the day. Lazy."""
    rows = (
        orders.where(F.col("customer_id").isNotNull() & F.col("order_ts").isNotNull())
        .where(~F.coalesce(F.col("is_return"), F.lit(False)))
        .where(F.col("order_ts") < F.date_add(F.lit(until).cast("date"), 1).cast("timestamp"))
    )
    if after is not None:
        rows = rows.where(F.col("order_ts") >= F.date_add(F.lit(after).cast("date"), 1).cast("timestamp"))
    return rows.groupBy("customer_id", F.to_date("order_ts").alias("day")).agg(
        F.sum(F.coalesce(F.col("amount_base"), F.lit(0.0))).alias("value")
    )


def purchase_statistics(orders: DataFrame, as_of: dt.date, unit_days: float = 7.0) -> DataFrame:
    """Per-customer x, t_x, T, m and first_purchase from a frame shaped like silver.orders (customer_id,
    order_ts, amount_base, is_return): see the module docstring. A lazy transform; no Spark job."""
    per_customer = (
        purchase_days(orders, as_of)
        .groupBy("customer_id")
        .agg(
            F.min("day").alias("first_purchase"),
            F.max("day").alias("last_purchase"),
            (F.count("*") - 1).alias("x"),
            F.sum("value").alias("total"),
            F.min_by("value", "day").alias("first_value"),
        )
    )
    return per_customer.select(
        "customer_id",
        F.col("x").cast("long").alias("x"),
        (F.datediff("last_purchase", "first_purchase") / F.lit(float(unit_days))).alias("t_x"),
        (F.datediff(F.lit(as_of).cast("date"), "first_purchase") / F.lit(float(unit_days))).alias("T"),
        F.when(F.col("x") > 0, (F.col("total") - F.col("first_value")) / F.col("x")).alias("m"),
        "first_purchase",
    )


def holdout_tuples(orders: DataFrame, as_of: dt.date, holdout_days: int, unit_days: float) -> pd.DataFrame:
    """For the calibration plot: the distinct (x, t_x, T) as of ``as_of - holdout_days`` with the purchase days
    each customer then made in the holdout window up to ``as_of`` (``actual``), and how many customers share
    each (``weight``); one query, collected through Arrow."""
    end = as_of - dt.timedelta(days=holdout_days)
    calibration = purchase_statistics(orders, end, unit_days)
    actual = purchase_days(orders, as_of, after=end).groupBy("customer_id").agg(F.count("*").alias("actual"))
    grouped = (
        calibration.join(actual, "customer_id", "left")
        .groupBy("x", "t_x", "T", F.coalesce("actual", F.lit(0)).alias("actual"))
        .agg(F.count("*").alias("weight"))
    )
    return grouped.toArrow().to_pandas()


def tuple_counts(stats: DataFrame) -> Tuples:
    """The distinct (x, t_x, T) of ``stats`` (``purchase_statistics``' columns) with their customer counts, collected
    as NumPy arrays through Arrow in one query (the benchmark counts two Spark jobs for it: with adaptive query
    execution the shuffle's map stage runs as a job of its own)."""
    grouped = stats.groupBy("x", "t_x", "T").agg(F.count("*").alias("weight"))
    table = grouped.toArrow()
    return Tuples(*(table.column(c).to_numpy().astype(float) for c in ("x", "t_x", "T", "weight")))


def spend_pairs(stats: DataFrame, decimals: int = 2) -> SpendPairs:
    """The distinct (x, m rounded to ``decimals``) of the customers with x > 0 and a rounded m > 0, with their
    counts, collected as NumPy arrays through Arrow in one query. The Gamma-Gamma likelihood does not separate x
    from m, so this is as far as the data compresses: rounding m to cents changes no money amount, and equal
    pairs collapse (at 10M simulated customers, 4M with repeat purchases made 190,000 pairs)."""
    grouped = (
        stats.select("x", F.round("m", decimals).alias("m"))
        .where((F.col("x") > 0) & (F.col("m") > 0))
        .groupBy("x", "m")
        .agg(F.count("*").alias("weight"))
    )
    table = grouped.toArrow()
    return SpendPairs(*(table.column(c).to_numpy().astype(float) for c in ("x", "m", "weight")))
