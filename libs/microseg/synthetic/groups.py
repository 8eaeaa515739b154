"""The planted customer groups and the random draws every generator shares."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, fields

from pyspark.sql import Column
from pyspark.sql import functions as F


@dataclass(frozen=True)
class Group:
    name: str
    weight: float  # share of customers drawn into the group
    orders: tuple[int, int]  # min, max orders over the customer's active window
    order_value: float  # typical order value in EUR
    discount: tuple[float, float]  # discount share range
    last_order_gap: tuple[int, int]  # days between the last possible order and end_date
    signup_recent_days: int | None  # new customers signed up within this many days of end_date
    sessions: tuple[int, int]  # min, max web sessions
    cart_add_rate: float
    email_open: float
    email_click: float
    nps: tuple[int, int]  # min, max NPS answer
    offer_rate: float  # share of orders placed with an offer code (only those carry a discount)
    return_rate: float  # share of orders returned a week later
    cart_conversion: float  # share of sessions that end in a purchase event


# The planted groups at a glance: one column per group, one row per Group field (rows in any order).
# "a-b" is a (min, max) range, "-" is None. The column order is the order of GROUPS, which seeds the
# group draw: keep it. Lapsed customers placed no order for more than a year before end_date.
_GROUP_TABLE = """
name                loyal_high_spender  bargain_hunter  lapsed   cart_abandoner  new_customer
weight              0.15                0.25            0.20     0.20            0.20

orders              14-26               8-14            2-5      1-2             1-3
order_value         160.0               28.0            70.0     45.0            55.0
discount            0.0-0.05            0.2-0.4         0.0-0.1  0.0-0.1         0.0-0.1
offer_rate          0.1                 0.8             0.1      0.15            0.2
return_rate         0.04                0.12            0.04     0.04            0.04

last_order_gap      0-14                0-40            380-560  20-120          0-20
signup_recent_days  -                   -               -        -               60

sessions            8-14                6-10            0-2      12-20           3-6
cart_add_rate       0.3                 0.4             0.2      0.8             0.4
cart_conversion     0.7                 0.5             0.3      0.05            0.5

email_open          0.6                 0.45            0.05     0.25            0.5
email_click         0.25                0.2             0.01     0.05            0.15
nps                 8-10                5-8             0-5      4-8             6-10
"""


def _range(cast: Callable[[str], int | float]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        low, high = text.split("-")
        return cast(low), cast(high)

    return parse


_PARSE_CELL: dict[str, Callable[[str], object]] = {
    "str": str,
    "float": float,
    "int | None": lambda text: None if text == "-" else int(text),
    "tuple[int, int]": _range(int),
    "tuple[float, float]": _range(float),
}


def _parse_groups(table: str) -> tuple[Group, ...]:
    """One Group per column of ``table``, whose lines are a Group field name and then one cell per group."""
    rows: dict[str, list[str]] = {}
    for line in table.splitlines():
        if line.strip():
            name, *cells = line.split()
            if name in rows:
                raise ValueError(f"group table: row {name!r} appears twice")
            rows[name] = cells
    types = {f.name: f.type for f in fields(Group)}
    if set(rows) != set(types):
        raise ValueError(f"group table: rows {sorted(rows)} are not the Group fields {sorted(types)}")
    count = len(rows["name"])
    if any(len(cells) != count for cells in rows.values()):
        raise ValueError(f"group table: every row needs one cell for each of the {count} groups")
    return tuple(Group(**{f: _PARSE_CELL[types[f]](rows[f][i]) for f in types}) for i in range(count))


GROUPS = _parse_groups(_GROUP_TABLE)


FIRST_NAMES = ["Anna", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Isla", "Jonas", "Klara", "Liam"]
LAST_NAMES = ["Smith", "Müller", "Dubois", "Jansen", "García", "Rossi", "Novak", "Murphy", "Schmidt", "Martin"]
COUNTRIES = ["United Kingdom", "germany", "FR", "Netherlands", " Ireland", "ES", "United States"]
CATEGORIES = ["fashion", "home", "beauty", "electronics", "sports", "toys", "grocery", "books"]
CHANNELS = ["web", "app", "store"]
CURRENCIES = ["EUR", "EUR", "EUR", "GBP", "USD"]
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
