"""Synthetic multi-source customer data, generated in parallel by Spark.

Every random draw is a hash of (seed, purpose, row key), so the output is the
same for the same seed whatever the partitioning. Customers come from planted
behavioural groups; the true group (and whether the customer is a planted mover, see
``_mover_burst``) goes to ``_ground_truth/`` (the pipeline
never reads it). Known dirt is injected as extra or altered rows, each dirty
row carrying exactly one dirt kind, and ``_manifest.json`` counts both rows
per source and injected rows per dirt kind.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.config import DatagenConfig


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

SOURCES = (
    "crm_customers",
    "orders",
    "order_items",
    "web_events",
    "email_events",
    "support_tickets",
    "survey_responses",
)


def _uniform(seed: int, purpose: str, *keys: Column | str) -> Column:
    """A deterministic uniform draw in [0, 1) from (seed, purpose, keys)."""
    cols = [F.col(k) if isinstance(k, str) else k for k in keys]
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(purpose), *cols), F.lit(1_000_003)) / F.lit(1_000_003.0)


def _int_between(u: Column, low: int, high: int) -> Column:
    return (F.lit(low) + F.floor(u * (high - low + 1))).cast("int")


def _pick(u: Column, values: list[str]) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), (F.floor(u * len(values)) + 1).cast("int"))


def _by_group(attribute: str) -> Column:
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


def _ts(day_offset: Column, start: dt.date, seconds_u: Column) -> Column:
    """A timestamp ``day_offset`` days after ``start`` at a time of day drawn from ``seconds_u``."""
    base = F.to_timestamp(F.date_add(F.lit(start), day_offset.cast("int")))
    return F.timestamp_seconds(F.unix_timestamp(base) + F.floor(seconds_u * 86_400).cast("long"))


def customers_frame(spark: SparkSession, cfg: DatagenConfig) -> DataFrame:
    """One row per planted customer with its group and behavioural parameters (no dirt)."""
    seed = cfg.seed
    horizon = (cfg.end_date - cfg.start_date).days
    partitions = cfg.partitions or max(2, cfg.customers // 250_000)
    cumulative, group_expr = 0.0, None
    u_group = _uniform(seed, "group", "id")
    for group in GROUPS:
        cumulative += group.weight
        cond = u_group < F.lit(cumulative)
        group_expr = F.when(cond, group.name) if group_expr is None else group_expr.when(cond, group.name)
    group_expr = group_expr.otherwise(GROUPS[-1].name)

    df = spark.range(0, cfg.customers, numPartitions=partitions).withColumn("group", group_expr)
    recent_days = _by_group("signup_recent_days")
    signup_offset = F.when(
        recent_days.isNotNull(), F.lit(horizon) - F.floor(_uniform(seed, "signup", "id") * recent_days)
    ).otherwise(F.floor(_uniform(seed, "signup", "id") * F.lit(min(150, horizon // 4))))
    gap = _by_group("last_order_gap")
    last_offset = F.lit(horizon) - gap[0] - F.floor(_uniform(seed, "gap", "id") * (gap[1] - gap[0] + 1))
    first = F.element_at(F.array(*[F.lit(n) for n in FIRST_NAMES]), (F.col("id") % len(FIRST_NAMES) + 1).cast("int"))
    last = F.element_at(
        F.array(*[F.lit(n) for n in LAST_NAMES]), (F.floor(F.col("id") / 7) % len(LAST_NAMES) + 1).cast("int")
    )
    orders = _by_group("orders")
    sessions = _by_group("sessions")
    return df.select(
        "id",
        "group",
        F.format_string("C%08d", F.col("id") + 1).alias("customer_ref"),
        first.alias("first_name"),
        last.alias("last_name"),
        signup_offset.cast("int").alias("signup_offset"),
        F.greatest(last_offset, signup_offset).cast("int").alias("last_offset"),
        (orders[0] + F.floor(_uniform(seed, "n_orders", "id") * (orders[1] - orders[0] + 1)))
        .cast("int")
        .alias("n_orders"),
        (sessions[0] + F.floor(_uniform(seed, "n_sessions", "id") * (sessions[1] - sessions[0] + 1)))
        .cast("int")
        .alias("n_sessions"),
        _by_group("order_value").alias("order_value"),
        _by_group("discount").alias("discount_range"),
        _by_group("offer_rate").alias("offer_rate"),
        _by_group("return_rate").alias("return_rate"),
        _by_group("cart_conversion").alias("cart_conversion"),
        _by_group("cart_add_rate").alias("cart_add_rate"),
        _by_group("email_open").alias("email_open"),
        _by_group("email_click").alias("email_click"),
        _by_group("nps").alias("nps_range"),
        (_uniform(seed, "consent_profiling", "id") < 0.97).alias("consent_profiling"),
        (_uniform(seed, "consent_email", "id") < 0.85).alias("consent_email"),
        (_uniform(seed, "consent_sms", "id") < 0.5).alias("consent_sms"),
        (_uniform(seed, "invalid_email", "id") < cfg.dirt.invalid_email).alias("dirty_email"),
        ((F.col("group") == "lapsed") & (_uniform(seed, "mover", "id") < cfg.movers)).alias("mover"),
    )


def _email(first: Column, last: Column, id_col: Column) -> Column:
    local = F.lower(F.concat_ws(".", F.translate(first, "üéí", "uei"), F.translate(last, "üéí", "uei"), id_col))
    return F.concat(local, F.lit("@example.com"))


def crm_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """CRM rows; dirt: invalid emails (in place) and duplicates differing by case or white space."""
    seed, start = cfg.seed, cfg.start_date
    email = _email(F.col("first_name"), F.col("last_name"), F.col("id"))
    bad_email = F.when(F.col("id") % 2 == 0, F.regexp_replace(email, "@", " at ")).otherwise(
        F.regexp_replace(email, "@example.com", "@")
    )
    # One unique London number per customer, written three ways; clean brings each to E.164.
    hi, lo = F.floor(F.col("id") / 10_000) % 1000, F.col("id") % 10_000
    phone = (
        F.when(F.col("id") % 3 == 0, F.format_string("+44 20 7%03d %04d", hi, lo))
        .when(F.col("id") % 3 == 1, F.format_string("+44 (0)20 7%03d-%04d", hi, lo))
        .otherwise(F.format_string("0044-20-7%03d-%04d", hi, lo))
    )
    signup = F.date_add(F.lit(start), F.col("signup_offset"))
    updated = _ts(F.col("signup_offset") + 1, start, _uniform(seed, "updated", "id"))
    base = customers.select(
        "customer_ref",
        "first_name",
        "last_name",
        F.when(F.col("dirty_email"), bad_email).otherwise(email).alias("email"),
        phone.alias("phone"),
        _pick(_uniform(seed, "country", "id"), COUNTRIES).alias("country"),
        signup.alias("signup_date"),
        updated.alias("updated_at"),
        "consent_email",
        "consent_sms",
        "consent_profiling",
        F.when(F.col("dirty_email"), F.lit("invalid_email")).alias("_dirt"),
        "id",
    )
    duplicates = base.where(_uniform(seed, "crm_duplicate", "id") < cfg.dirt.crm_duplicate).select(
        "customer_ref",
        F.upper("first_name").alias("first_name"),
        F.concat(F.lit(" "), F.col("last_name"), F.lit(" ")).alias("last_name"),
        F.concat(F.lit("  "), F.upper("email"), F.lit(" ")).alias("email"),
        "phone",
        "country",
        "signup_date",
        (F.col("updated_at") - F.expr("INTERVAL 1 DAY")).alias("updated_at"),
        "consent_email",
        "consent_sms",
        "consent_profiling",
        F.lit("crm_duplicate").alias("_dirt"),
        "id",
    )
    return base.unionByName(duplicates).drop("id")


def orders_frames(customers: DataFrame, cfg: DatagenConfig) -> tuple[DataFrame, DataFrame]:
    """Orders and their items; dirt rows are extra orders (negative, future, orphan, unknown currency)."""
    seed, start = cfg.seed, cfg.start_date
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
        + F.floor(_uniform(seed, "order_day", "order_id") * (F.col("last_offset") - F.col("signup_offset") + 1))
    )
    noise = F.exp((_uniform(seed, "order_value", "order_id") - 0.5) * 0.8)
    currency = _pick(_uniform(seed, "currency", "order_id"), CURRENCIES)
    rate = F.when(currency == "GBP", 0.85).when(currency == "USD", 1.08).otherwise(1.0)
    low, high = F.col("discount_range")[0], F.col("discount_range")[1]
    with_offer = _uniform(seed, "offer", "order_id") < F.col("offer_rate")
    discount_share = F.when(with_offer, low + _uniform(seed, "discount", "order_id") * (high - low)).otherwise(0.0)
    sales = exploded.select(
        "order_id",
        "customer_ref",
        _ts(day, start, _uniform(seed, "order_time", "order_id")).alias("order_ts"),
        currency.alias("currency"),
        F.round(F.col("order_value") * noise * rate, 2).alias("amount"),
        F.round(F.col("order_value") * noise * rate * discount_share, 2).alias("discount"),
        _pick(_uniform(seed, "channel", "order_id"), CHANNELS).alias("channel"),
        F.lit("sale").alias("order_type"),
        F.when(
            with_offer, F.format_string("OFFER%02d", _int_between(_uniform(seed, "offer_code", "order_id"), 1, 12))
        ).alias("offer_code"),
        "return_rate",
        F.lit(None).cast("string").alias("_dirt"),
    )
    # A returned order comes back a week later as a return of the full amount (no items of its own).
    returns = sales.where(_uniform(seed, "return", "order_id") < F.col("return_rate")).withColumns(
        {
            "order_id": F.concat(F.lit("RET-"), F.col("order_id")),
            "order_ts": F.col("order_ts") + F.expr("INTERVAL 7 DAYS"),
            "discount": F.lit(0.0),
            "order_type": F.lit("return"),
            "offer_code": F.lit(None).cast("string"),
        }
    )
    sales, returns = sales.drop("return_rate"), returns.drop("return_rate")
    sales = sales.unionByName(_mover_burst(customers, cfg))
    items = _items_frame(sales, cfg)
    orders = sales.unionByName(returns).unionByName(_dirty_orders(sales, cfg))
    return orders, items


MOVER_ORDERS, MOVER_ORDER_VALUE = 12, 160.0


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
    day = F.lit(horizon + 1) + F.floor(_uniform(seed, "burst_day", "order_id") * cfg.mover_days)
    return burst.select(
        "order_id",
        "customer_ref",
        _ts(day, cfg.start_date, _uniform(seed, "order_time", "order_id")).alias("order_ts"),
        F.lit("EUR").alias("currency"),
        F.round(F.lit(MOVER_ORDER_VALUE) * F.exp((_uniform(seed, "order_value", "order_id") - 0.5) * 0.4), 2).alias(
            "amount"
        ),
        F.lit(0.0).alias("discount"),
        _pick(_uniform(seed, "channel", "order_id"), CHANNELS).alias("channel"),
        F.lit("sale").alias("order_type"),
        F.lit(None).cast("string").alias("offer_code"),
        F.lit(None).cast("string").alias("_dirt"),
    )


def _items_frame(orders: DataFrame, cfg: DatagenConfig) -> DataFrame:
    seed = cfg.seed
    with_n = orders.withColumn("n_items", _int_between(_uniform(seed, "n_items", "order_id"), 1, 4))
    items = with_n.select(
        "order_id",
        "amount",
        "n_items",
        F.explode(F.sequence(F.lit(1), F.col("n_items"))).alias("line_no"),
    ).withColumn("qty", _int_between(_uniform(seed, "qty", "order_id", "line_no"), 1, 3))
    items = items.select(
        "order_id",
        F.col("line_no").cast("int").alias("line_no"),
        F.format_string("P%05d", _int_between(_uniform(seed, "product", "order_id", "line_no"), 1, 5000)).alias(
            "product_id"
        ),
        _pick(_uniform(seed, "category", "order_id", "line_no"), CATEGORIES).alias("category"),
        F.col("qty").alias("quantity"),
        F.round(F.col("amount") / F.col("n_items") / F.col("qty"), 2).alias("unit_price"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    orphans = items.where(_uniform(seed, "orphan_item", "order_id", "line_no") < cfg.dirt.orphan_reference).select(
        F.concat(F.lit("OMISSING-"), F.col("order_id")).alias("order_id"),
        *[c for c in items.columns if c not in ("order_id", "_dirt")],
        F.lit("orphan_reference").alias("_dirt"),
    )
    return items.unionByName(orphans)


def _dirty_orders(orders: DataFrame, cfg: DatagenConfig) -> DataFrame:
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
        picked = orders.where(_uniform(seed, kind, "order_id") < rate)
        frames.append(
            picked.withColumns(changes).withColumns(
                {"order_id": F.concat(F.lit(f"D{kind[:3].upper()}-"), F.col("order_id")), "_dirt": F.lit(kind)}
            )
        )
    dirty = frames[0]
    for frame in frames[1:]:
        dirty = dirty.unionByName(frame)
    return dirty


def web_events_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """Web sessions of 2 to 6 events, plus a purchase in converting ones; some are anonymous (no customer_ref)."""
    seed, start = cfg.seed, cfg.start_date
    sessions = customers.select(
        "customer_ref",
        "id",
        "signup_offset",
        "last_offset",
        "cart_add_rate",
        "cart_conversion",
        F.explode(F.sequence(F.lit(1), F.col("n_sessions"))).alias("session_no"),
    ).where(F.col("session_no") > 0)
    sessions = sessions.withColumn(
        "session_id", F.format_string("S%s-%03d", F.col("customer_ref"), F.col("session_no"))
    )
    horizon = (cfg.end_date - cfg.start_date).days
    day = F.col("signup_offset") + F.floor(
        _uniform(seed, "session_day", "session_id")
        * (F.least(F.col("last_offset") + 30, F.lit(horizon)) - F.col("signup_offset") + 1)
    )
    sessions = sessions.withColumns(
        {
            "session_start": _ts(day, start, _uniform(seed, "session_time", "session_id") * 0.9),
            "logged_in": _uniform(seed, "logged_in", "session_id") < 0.7,
            "n_events": _int_between(_uniform(seed, "n_events", "session_id"), 2, 6),
            "converts": _uniform(seed, "converts", "session_id") < F.col("cart_conversion"),
        }
    )
    # A converting session ends with one more event: the purchase.
    last_event = F.col("n_events") + F.col("converts").cast("int")
    events = sessions.select("*", F.explode(F.sequence(F.lit(1), last_event)).alias("event_no")).withColumn(
        "event_id", F.format_string("E%s-%d", F.col("session_id"), F.col("event_no"))
    )
    u_type = _uniform(seed, "event_type", "event_id")
    event_type = (
        F.when(F.col("event_no") == 1, "page_view")
        .when(F.col("event_no") > F.col("n_events"), "purchase")
        .when(u_type < F.col("cart_add_rate") * 0.5, "add_to_cart")
        .when(u_type < 0.55, "product_view")
        .when(u_type < 0.75, "search")
        .when(u_type < 0.85, "wishlist_add")
        .when(u_type < 0.92, "checkout_start")
        .otherwise("page_view")
    )
    clean = events.select(
        "event_id",
        F.format_string("A%010d", F.col("id") * 7919 % 10_000_000_000).alias("anonymous_id"),
        F.when(F.col("logged_in"), F.col("customer_ref")).alias("customer_ref"),
        "session_id",
        (F.col("session_start") + F.make_interval(mins=F.col("event_no") * 2)).alias("event_ts"),
        event_type.alias("event_type"),
        _pick(_uniform(seed, "device", "session_id"), ["web", "app"]).alias("channel"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    future = clean.where(_uniform(seed, "future_web", "event_id") < cfg.dirt.future_timestamp).withColumns(
        {
            "event_id": F.concat(F.lit("DFUT-"), F.col("event_id")),
            "event_ts": F.make_timestamp(F.lit(FUTURE_YEAR), F.lit(6), F.lit(1), F.lit(12), F.lit(0), F.lit(0)),
            "_dirt": F.lit("future_timestamp"),
        }
    )
    return clean.unionByName(future)


def email_events_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """Campaign sends, opens, clicks and unsubscribes keyed by email address (as an ESP exports them)."""
    seed, start = cfg.seed, cfg.start_date
    horizon = (cfg.end_date - cfg.start_date).days
    reachable = customers.where(F.col("consent_email") & ~F.col("dirty_email"))
    sends = reachable.select(
        "id",
        "customer_ref",
        "signup_offset",
        "email_open",
        "email_click",
        _email(F.col("first_name"), F.col("last_name"), F.col("id")).alias("email"),
        F.explode(F.sequence(F.lit(1), F.lit(24))).alias("campaign_no"),
    )
    # Campaigns go out twice a month; a customer receives those after signing up.
    sends = sends.withColumn("campaign_day", F.floor(F.col("campaign_no") * F.lit(horizon / 24.5)).cast("int")).where(
        F.col("campaign_day") >= F.col("signup_offset")
    )
    sends = sends.withColumn("send_key", F.concat_ws("-", "customer_ref", "campaign_no"))
    opened = _uniform(seed, "open", "send_key") < F.col("email_open")
    clicked = opened & (_uniform(seed, "click", "send_key") < F.col("email_click") / F.col("email_open"))
    unsubscribed = _uniform(seed, "unsub", "send_key") < 0.003
    kinds = F.filter(
        F.array(
            F.lit("sent"),
            F.when(opened, F.lit("open")),
            F.when(clicked, F.lit("click")),
            F.when(unsubscribed, F.lit("unsubscribe")),
        ),
        lambda x: x.isNotNull(),
    )
    events = sends.select("*", F.posexplode(kinds).alias("pos", "event_type"))
    clean = events.select(
        F.format_string("M%s-%02d-%d", F.col("customer_ref"), F.col("campaign_no"), F.col("pos")).alias("event_id"),
        "email",
        F.format_string("CMP%03d", F.col("campaign_no")).alias("campaign_id"),
        "event_type",
        _ts(F.col("campaign_day"), start, F.lit(0.375) + F.col("pos") * 0.05).alias("event_ts"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    orphans = clean.where(_uniform(seed, "orphan_email", "event_id") < cfg.dirt.orphan_reference).withColumns(
        {
            "event_id": F.concat(F.lit("DORP-"), F.col("event_id")),
            "email": F.concat(F.lit("unknown."), F.col("email")),
            "_dirt": F.lit("orphan_reference"),
        }
    )
    return clean.unionByName(orphans)


def support_tickets_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    seed, start = cfg.seed, cfg.start_date
    tickets = customers.select(
        "customer_ref",
        "signup_offset",
        "last_offset",
        F.explode(F.sequence(F.lit(0), _int_between(_uniform(seed, "n_tickets", "id"), 0, 3))).alias("ticket_no"),
    ).where(F.col("ticket_no") > 0)
    tickets = tickets.withColumn("ticket_id", F.format_string("T%s-%d", F.col("customer_ref"), F.col("ticket_no")))
    day = F.col("signup_offset") + F.floor(
        _uniform(seed, "ticket_day", "ticket_id") * (F.col("last_offset") - F.col("signup_offset") + 1)
    )
    clean = tickets.select(
        "ticket_id",
        "customer_ref",
        _ts(day, start, _uniform(seed, "ticket_time", "ticket_id")).alias("created_at"),
        _pick(_uniform(seed, "ticket_channel", "ticket_id"), ["email", "phone", "chat"]).alias("channel"),
        _pick(_uniform(seed, "ticket_topic", "ticket_id"), ["delivery", "returns", "payment", "product"]).alias(
            "topic"
        ),
        _int_between(_uniform(seed, "csat", "ticket_id"), 1, 5).alias("satisfaction"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    orphans = clean.where(_uniform(seed, "orphan_ticket", "ticket_id") < cfg.dirt.orphan_reference * 10).withColumns(
        {
            "ticket_id": F.concat(F.lit("DORP-"), F.col("ticket_id")),
            "customer_ref": F.concat(F.lit("CX"), F.col("customer_ref")),
            "_dirt": F.lit("orphan_reference"),
        }
    )
    return clean.unionByName(orphans)


def survey_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    seed, start = cfg.seed, cfg.start_date
    horizon = (cfg.end_date - cfg.start_date).days
    answered = customers.where(_uniform(seed, "survey", "id") < 0.25)
    day = F.least(F.lit(horizon), F.col("signup_offset") + F.floor(_uniform(seed, "survey_day", "id") * 120))
    return answered.select(
        F.format_string("R%s", F.col("customer_ref")).alias("response_id"),
        "customer_ref",
        _ts(day, start, _uniform(seed, "survey_time", "id")).alias("submitted_at"),
        (
            F.col("nps_range")[0]
            + F.floor(_uniform(seed, "nps", "id") * (F.col("nps_range")[1] - F.col("nps_range")[0] + 1))
        )
        .cast("int")
        .alias("nps"),
        F.lit(None).cast("string").alias("_dirt"),
    )


def _malformed_count(rows: int, rate: float) -> int:
    return round(rows * rate)


def _malformed_csv(spark: SparkSession, columns: list[str], count: int) -> DataFrame:
    """Rows whose typed fields cannot be parsed: a reader with an explicit schema flags them as corrupt."""
    return spark.range(count).select(
        *[F.format_string(f"#garbled-{i}-%d#", F.col("id")).alias(c) for i, c in enumerate(columns)]
    )


def _malformed_json(spark: SparkSession, count: int) -> DataFrame:
    return spark.range(count).select(
        F.format_string('{"event_id": "BROKEN-%d", "event_ts": ', F.col("id")).alias("value")
    )


def generate(spark: SparkSession, cfg: DatagenConfig, out: str) -> dict:
    """Write every source, the ground truth and ``_manifest.json`` under ``out``; return the manifest."""
    customers = customers_frame(spark, cfg).cache()
    orders, items = orders_frames(customers, cfg)
    frames = {
        "crm_customers": ("csv", crm_frame(customers, cfg)),
        "orders": ("parquet", orders),
        "order_items": ("parquet", items),
        "web_events": ("json", web_events_frame(customers, cfg)),
        "email_events": ("csv", email_events_frame(customers, cfg)),
        "support_tickets": ("csv", support_tickets_frame(customers, cfg)),
        "survey_responses": ("json", survey_frame(customers, cfg)),
    }
    manifest: dict = {
        "seed": cfg.seed,
        "customers": cfg.customers,
        "start_date": cfg.start_date.isoformat(),
        "end_date": cfg.end_date.isoformat(),
        "rows": {},
        "dirt": {},
    }
    for source, (fmt, frame) in frames.items():
        frame = frame.cache()
        counts = {r["_dirt"]: r["count"] for r in frame.groupBy("_dirt").count().collect()}
        dirt = {k: counts[k] for k in sorted(k for k in counts if k is not None)}
        rows = sum(counts.values())
        path = f"{out}/{source}"
        _write(frame.drop("_dirt"), fmt, path, partitions=max(1, rows // 2_000_000))
        if fmt in ("csv", "json") and cfg.dirt.malformed_line > 0:
            malformed = _malformed_count(rows, cfg.dirt.malformed_line)
            if malformed:
                columns = [c for c in frame.columns if c != "_dirt"]
                bad = _malformed_csv(spark, columns, malformed) if fmt == "csv" else _malformed_json(spark, malformed)
                _write(bad, "csv" if fmt == "csv" else "text", path, partitions=1, mode="append")
                if fmt == "json":
                    _rename_extension(spark, path, ".txt", ".json")
                dirt["malformed_line"] = malformed
                rows += malformed
        frame.unpersist()
        manifest["rows"][source] = rows
        manifest["dirt"][source] = dirt
    customers.select("customer_ref", "group", "mover").coalesce(1).write.mode("overwrite").parquet(
        f"{out}/_ground_truth"
    )
    customers.unpersist()
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def _rename_extension(spark: SparkSession, folder: str, old: str, new: str) -> None:
    """Rename the text writer's part files so that a reader globbing ``*.json`` finds them (any Hadoop FS)."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(folder)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    for status in fs.listStatus(hadoop_path):
        name = status.getPath().getName()
        if name.endswith(old):
            fs.rename(status.getPath(), jvm.org.apache.hadoop.fs.Path(folder, name[: -len(old)] + new))


def _write(df: DataFrame, fmt: str, path: str, partitions: int, mode: str = "overwrite") -> None:
    writer = df.repartition(partitions).write.mode(mode)
    if fmt == "csv":
        # Keep white space as generated: CRM duplicates differ from the original by it.
        writer.options(
            header="true",
            timestampFormat="yyyy-MM-dd'T'HH:mm:ss",
            ignoreLeadingWhiteSpace="false",
            ignoreTrailingWhiteSpace="false",
        ).csv(path)
    elif fmt == "json":
        writer.option("timestampFormat", "yyyy-MM-dd'T'HH:mm:ss'Z'").json(path)
    elif fmt == "text":
        writer.text(path)
    else:
        writer.parquet(path)
