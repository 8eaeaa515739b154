"""Generated customers and their CRM records (with duplicates and invalid emails planted)."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime.config import DatagenConfig
from microseg.synthetic.groups import COUNTRIES, FIRST_NAMES, GROUPS, LAST_NAMES, by_group, pick, ts, uniform


def customers_frame(spark: SparkSession, cfg: DatagenConfig) -> DataFrame:
    """One row per planted customer with its group and behavioural parameters (no dirt)."""
    seed = cfg.seed
    horizon = (cfg.end_date - cfg.start_date).days
    partitions = cfg.partitions or max(2, cfg.customers // 250_000)
    cumulative, group_expr = 0.0, None
    u_group = uniform(seed, "group", "id")
    for group in GROUPS:
        cumulative += group.weight
        cond = u_group < F.lit(cumulative)
        group_expr = F.when(cond, group.name) if group_expr is None else group_expr.when(cond, group.name)
    group_expr = group_expr.otherwise(GROUPS[-1].name)

    df = spark.range(0, cfg.customers, numPartitions=partitions).withColumn("group", group_expr)
    recent_days = by_group("signup_recent_days")
    signup_offset = F.when(
        recent_days.isNotNull(), F.lit(horizon) - F.floor(uniform(seed, "signup", "id") * recent_days)
    ).otherwise(F.floor(uniform(seed, "signup", "id") * F.lit(min(150, horizon // 4))))
    gap = by_group("last_order_gap")
    last_offset = F.lit(horizon) - gap[0] - F.floor(uniform(seed, "gap", "id") * (gap[1] - gap[0] + 1))
    return customer_rows(df, cfg, signup_offset, F.greatest(last_offset, signup_offset))


def customer_rows(df: DataFrame, cfg: DatagenConfig, signup_offset: Column, last_offset: Column) -> DataFrame:
    """The customers of ``df`` (columns ``id`` and ``group``) with their behavioural parameters, drawn from
    (seed, id); ``signup_offset`` and ``last_offset``: days after start_date of the signup and of the last
    possible order."""
    seed = cfg.seed
    first = F.element_at(F.array(*[F.lit(n) for n in FIRST_NAMES]), (F.col("id") % len(FIRST_NAMES) + 1).cast("int"))
    last = F.element_at(
        F.array(*[F.lit(n) for n in LAST_NAMES]), (F.floor(F.col("id") / 7) % len(LAST_NAMES) + 1).cast("int")
    )
    orders = by_group("orders")
    sessions = by_group("sessions")
    return df.select(
        "id",
        "group",
        F.format_string("C%08d", F.col("id") + 1).alias("customer_ref"),
        first.alias("first_name"),
        last.alias("last_name"),
        signup_offset.cast("int").alias("signup_offset"),
        last_offset.cast("int").alias("last_offset"),
        (orders[0] + F.floor(uniform(seed, "n_orders", "id") * (orders[1] - orders[0] + 1)))
        .cast("int")
        .alias("n_orders"),
        (sessions[0] + F.floor(uniform(seed, "n_sessions", "id") * (sessions[1] - sessions[0] + 1)))
        .cast("int")
        .alias("n_sessions"),
        by_group("order_value").alias("order_value"),
        by_group("discount").alias("discount_range"),
        by_group("offer_rate").alias("offer_rate"),
        by_group("return_rate").alias("return_rate"),
        by_group("cart_conversion").alias("cart_conversion"),
        by_group("cart_add_rate").alias("cart_add_rate"),
        by_group("email_open").alias("email_open"),
        by_group("email_click").alias("email_click"),
        by_group("nps").alias("nps_range"),
        (uniform(seed, "consent_profiling", "id") < 0.97).alias("consent_profiling"),
        (uniform(seed, "consent_email", "id") < 0.85).alias("consent_email"),
        (uniform(seed, "consent_sms", "id") < 0.5).alias("consent_sms"),
        (uniform(seed, "invalid_email", "id") < cfg.dirt.invalid_email).alias("dirty_email"),
        ((F.col("group") == "lapsed") & (uniform(seed, "mover", "id") < cfg.movers)).alias("mover"),
    )


def email_address(first: Column, last: Column, id_col: Column) -> Column:
    local = F.lower(F.concat_ws(".", F.translate(first, "üéí", "uei"), F.translate(last, "üéí", "uei"), id_col))
    return F.concat(local, F.lit("@example.com"))


def crm_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """CRM rows; dirt: invalid emails (in place) and duplicates differing by case or white space."""
    return with_crm_duplicates(crm_records(customers, cfg), cfg).drop("id")


def crm_records(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """One CRM record per customer (invalid emails planted in place), with its ``id`` and ``_dirt``."""
    seed, start = cfg.seed, cfg.start_date
    email = email_address(F.col("first_name"), F.col("last_name"), F.col("id"))
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
    updated = ts(F.col("signup_offset") + 1, start, uniform(seed, "updated", "id"))
    base = customers.select(
        "customer_ref",
        "first_name",
        "last_name",
        F.when(F.col("dirty_email"), bad_email).otherwise(email).alias("email"),
        phone.alias("phone"),
        pick(uniform(seed, "country", "id"), COUNTRIES).alias("country"),
        signup.alias("signup_date"),
        updated.alias("updated_at"),
        "consent_email",
        "consent_sms",
        "consent_profiling",
        F.when(F.col("dirty_email"), F.lit("invalid_email")).alias("_dirt"),
        "id",
    )
    return base


def with_crm_duplicates(base: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """``base`` (crm_records) and, for a share of its customers, a duplicate differing by case or white space
    and a day older."""
    seed = cfg.seed
    duplicates = base.where(uniform(seed, "crm_duplicate", "id") < cfg.dirt.crm_duplicate).select(
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
    return base.unionByName(duplicates)
