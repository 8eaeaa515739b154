"""The planted customer groups and the random draws every generator shares."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F


@dataclass(frozen=True)
class Group:
    name: str
    weight: float
    orders: tuple[int, int]  # min, max orders over the customer's active window
    order_value: float  # typical order value in EUR
    discount: tuple[float, float]  # discount share range
    last_order_gap: tuple[int, int]  # days between the last possible order and end_date
    signup_recent_days: int | None  # new customers signed up within this many days of end_date
    sessions: tuple[int, int]
    cart_add_rate: float
    email_open: float
    email_click: float
    nps: tuple[int, int]
    offer_rate: float  # share of orders placed with an offer code (only those carry a discount)
    return_rate: float  # share of orders returned a week later
    cart_conversion: float  # share of sessions that end in a purchase event


GROUPS = (
    Group(
        "loyal_high_spender",
        0.15,
        (14, 26),
        160.0,
        (0.0, 0.05),
        (0, 14),
        None,
        (8, 14),
        0.3,
        0.6,
        0.25,
        (8, 10),
        0.1,
        0.04,
        0.7,
    ),
    Group(
        "bargain_hunter",
        0.25,
        (8, 14),
        28.0,
        (0.2, 0.4),
        (0, 40),
        None,
        (6, 10),
        0.4,
        0.45,
        0.2,
        (5, 8),
        0.8,
        0.12,
        0.5,
    ),
    # Lapsed: no order for more than a year before end_date.
    Group("lapsed", 0.20, (2, 5), 70.0, (0.0, 0.1), (380, 560), None, (0, 2), 0.2, 0.05, 0.01, (0, 5), 0.1, 0.04, 0.3),
    Group(
        "cart_abandoner",
        0.20,
        (1, 2),
        45.0,
        (0.0, 0.1),
        (20, 120),
        None,
        (12, 20),
        0.8,
        0.25,
        0.05,
        (4, 8),
        0.15,
        0.04,
        0.05,
    ),
    Group("new_customer", 0.20, (1, 3), 55.0, (0.0, 0.1), (0, 20), 60, (3, 6), 0.4, 0.5, 0.15, (6, 10), 0.2, 0.04, 0.5),
)


FIRST_NAMES = ["Anna", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Isla", "Jonas", "Klara", "Liam"]


LAST_NAMES = ["Smith", "Müller", "Dubois", "Jansen", "García", "Rossi", "Novak", "Murphy", "Schmidt", "Martin"]


COUNTRIES = ["United Kingdom", "germany", "FR", "Netherlands", " Ireland", "ES", "United States"]


CATEGORIES = ["fashion", "home", "beauty", "electronics", "sports", "toys", "grocery", "books"]


CHANNELS = ["web", "app", "store"]


CURRENCIES = ["EUR", "EUR", "EUR", "GBP", "USD"]


WEB_EVENT_TYPES = ["page_view", "product_view", "search", "add_to_cart", "checkout_start", "wishlist_add", "purchase"]


FUTURE_YEAR = 2099


def uniform(seed: int, purpose: str, *keys: Column | str) -> Column:
    """A deterministic uniform draw in [0, 1) from (seed, purpose, keys)."""
    cols = [F.col(k) if isinstance(k, str) else k for k in keys]
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(purpose), *cols), F.lit(1_000_003)) / F.lit(1_000_003.0)


def int_between(u: Column, low: int, high: int) -> Column:
    return (F.lit(low) + F.floor(u * (high - low + 1))).cast("int")


def pick(u: Column, values: list[str]) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), (F.floor(u * len(values)) + 1).cast("int"))


def by_group(attribute: str) -> Column:
    """A CASE expression giving ``attribute`` of the row's planted group."""
    expr = None
    for group in GROUPS:
        value = getattr(group, attribute)
        value = F.array(*[F.lit(v) for v in value]) if isinstance(value, tuple) else F.lit(value)
        expr = (
            F.when(F.col("group") == group.name, value)
            if expr is None
            else expr.when(F.col("group") == group.name, value)
        )
    return expr


def ts(day_offset: Column, start: dt.date, seconds_u: Column) -> Column:
    """A timestamp ``day_offset`` days after ``start`` at a time of day drawn from ``seconds_u``."""
    base = F.to_timestamp(F.date_add(F.lit(start), day_offset.cast("int")))
    return F.timestamp_seconds(F.unix_timestamp(base) + F.floor(seconds_u * 86_400).cast("long"))


MOVER_ORDERS, MOVER_ORDER_VALUE = 12, 160.0
