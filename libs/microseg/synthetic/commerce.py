"""Generated orders and order items, with the movers' burst and the planted dirt."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from microseg.runtime.config import DatagenConfig
from microseg.synthetic.groups import (
    CATEGORIES,
    CHANNELS,
    CURRENCIES,
    FUTURE_YEAR,
    int_between,
    pick,
    ts,
    uniform,
)

# Each planted mover places this many orders of about this value in the days after end_date.
MOVER_ORDERS, MOVER_ORDER_VALUE = 12, 160.0


def orders_frames(customers: DataFrame, cfg: DatagenConfig) -> tuple[DataFrame, DataFrame]:
    """Orders and their items; dirt rows are extra orders (negative, future, orphan, unknown currency)."""
    seed = cfg.seed
    exploded = customers.select(
        "customer_ref",
        "signup_offset",
        "last_offset",
        "order_value",
        "discount_range",
        "offer_rate",
        "return_rate",
        F.explode(F.sequence(F.lit(1), F.col("n_orders"))).alias("seq"),
    ).withColumn("order_id", F.format_string("O%s-%03d", F.col("customer_ref"), F.col("seq")))
    # The last order falls on the last day of the active window; earlier ones spread across it.
    day = F.when(F.col("seq") == 1, F.col("last_offset")).otherwise(
        F.col("signup_offset")
        + F.floor(uniform(seed, "order_day", "order_id") * (F.col("last_offset") - F.col("signup_offset") + 1))
    )
    sales = sale_rows(exploded, day, cfg)
    returns = return_rows(sales, cfg)
    sales, returns = sales.drop("return_rate"), returns.drop("return_rate")
    sales = sales.unionByName(_mover_burst(customers, cfg))
    items = items_frame(sales, cfg)
    orders = sales.unionByName(returns).unionByName(dirty_orders(sales, cfg))
    return orders, items


def sale_rows(orders: DataFrame, day: Column, cfg: DatagenConfig) -> DataFrame:
    """One sale per row of ``orders`` (order_id, customer_ref, order_value, discount_range, offer_rate,
    return_rate), placed ``day`` days after start_date; return_rate is kept for ``return_rows``."""
    seed, start = cfg.seed, cfg.start_date
    noise = F.exp((uniform(seed, "order_value", "order_id") - 0.5) * 0.8)
    currency = pick(uniform(seed, "currency", "order_id"), CURRENCIES)
    rate = F.when(currency == "GBP", 0.85).when(currency == "USD", 1.08).otherwise(1.0)
    low, high = F.col("discount_range")[0], F.col("discount_range")[1]
    with_offer = uniform(seed, "offer", "order_id") < F.col("offer_rate")
    discount_share = F.when(with_offer, low + uniform(seed, "discount", "order_id") * (high - low)).otherwise(0.0)
    return orders.select(
        "order_id",
        "customer_ref",
        ts(day, start, uniform(seed, "order_time", "order_id")).alias("order_ts"),
        currency.alias("currency"),
        F.round(F.col("order_value") * noise * rate, 2).alias("amount"),
        F.round(F.col("order_value") * noise * rate * discount_share, 2).alias("discount"),
        pick(uniform(seed, "channel", "order_id"), CHANNELS).alias("channel"),
        F.lit("sale").alias("order_type"),
        F.when(
            with_offer, F.format_string("OFFER%02d", int_between(uniform(seed, "offer_code", "order_id"), 1, 12))
        ).alias("offer_code"),
        "return_rate",
        F.lit(None).cast("string").alias("_dirt"),
    )


def return_rows(sales: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """A returned sale (``sale_rows``) comes back a week later as a return of the full amount (no items of
    its own)."""
    return sales.where(uniform(cfg.seed, "return", "order_id") < F.col("return_rate")).withColumns(
        {
            "order_id": F.concat(F.lit("RET-"), F.col("order_id")),
            "order_ts": F.col("order_ts") + F.expr("INTERVAL 7 DAYS"),
            "discount": F.lit(0.0),
            "order_type": F.lit("return"),
            "offer_code": F.lit(None).cast("string"),
        }
    )


def _mover_burst(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """Planted movers (lapsed customers) place a dozen big orders in the days after end_date.

    Snapshots at end_date and mover_days later then differ, for these customers only, in their value
    behaviour: they move from the lapsed profile to a loyal, high-spending one.
    """
    seed = cfg.seed
    burst = customers.where(F.col("mover")).select(
        "customer_ref", F.explode(F.sequence(F.lit(1), F.lit(MOVER_ORDERS))).alias("seq")
    )
    burst = burst.withColumn("order_id", F.format_string("B%s-%03d", F.col("customer_ref"), F.col("seq")))
    horizon = (cfg.end_date - cfg.start_date).days
    day = F.lit(horizon + 1) + F.floor(uniform(seed, "burst_day", "order_id") * cfg.mover_days)
    return burst.select(
        "order_id",
        "customer_ref",
        ts(day, cfg.start_date, uniform(seed, "order_time", "order_id")).alias("order_ts"),
        F.lit("EUR").alias("currency"),
        F.round(F.lit(MOVER_ORDER_VALUE) * F.exp((uniform(seed, "order_value", "order_id") - 0.5) * 0.4), 2).alias(
            "amount"
        ),
        F.lit(0.0).alias("discount"),
        pick(uniform(seed, "channel", "order_id"), CHANNELS).alias("channel"),
        F.lit("sale").alias("order_type"),
        F.lit(None).cast("string").alias("offer_code"),
        F.lit(None).cast("string").alias("_dirt"),
    )


def items_frame(orders: DataFrame, cfg: DatagenConfig) -> DataFrame:
    seed = cfg.seed
    with_n = orders.withColumn("n_items", int_between(uniform(seed, "n_items", "order_id"), 1, 4))
    items = with_n.select(
        "order_id",
        "amount",
        "n_items",
        F.explode(F.sequence(F.lit(1), F.col("n_items"))).alias("line_no"),
    ).withColumn("qty", int_between(uniform(seed, "qty", "order_id", "line_no"), 1, 3))
    items = items.select(
        "order_id",
        F.col("line_no").cast("int").alias("line_no"),
        F.format_string("P%05d", int_between(uniform(seed, "product", "order_id", "line_no"), 1, 5000)).alias(
            "product_id"
        ),
        pick(uniform(seed, "category", "order_id", "line_no"), CATEGORIES).alias("category"),
        F.col("qty").alias("quantity"),
        F.round(F.col("amount") / F.col("n_items") / F.col("qty"), 2).alias("unit_price"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    orphans = items.where(uniform(seed, "orphan_item", "order_id", "line_no") < cfg.dirt.orphan_reference).select(
        F.concat(F.lit("OMISSING-"), F.col("order_id")).alias("order_id"),
        *[c for c in items.columns if c not in ("order_id", "_dirt")],
        F.lit("orphan_reference").alias("_dirt"),
    )
    return items.unionByName(orphans)


def dirty_orders(orders: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """Extra copies of clean orders, each with a single kind of dirt and a new order id (no items)."""
    seed, rates = cfg.seed, cfg.dirt
    kinds = {
        "negative_amount": {"amount": -F.abs(F.col("amount")) - F.lit(1.0)},
        "future_timestamp": {
            "order_ts": F.make_timestamp(F.lit(FUTURE_YEAR), F.lit(1), F.lit(1), F.lit(0), F.lit(0), F.lit(0))
        },
        "orphan_reference": {"customer_ref": F.concat(F.lit("CX"), F.col("customer_ref"))},
        "unknown_currency": {"currency": F.lit("XXX")},
    }
    frames = []
    for kind, changes in kinds.items():
        rate = getattr(rates, kind)
        picked = orders.where(uniform(seed, kind, "order_id") < rate)
        frames.append(
            picked.withColumns(changes).withColumns(
                {"order_id": F.concat(F.lit(f"D{kind[:3].upper()}-"), F.col("order_id")), "_dirt": F.lit(kind)}
            )
        )
    dirty = frames[0]
    for frame in frames[1:]:
        dirty = dirty.unionByName(frame)
    return dirty
