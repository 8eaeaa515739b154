"""Feature builders, one per source: pure transforms from silver tables to per-customer columns as of a date."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg.runtime.config import FeaturesConfig


def activity_column(table: str) -> str:
    """The builders' column holding a customer's latest activity in ``table`` (for days_since_activity)."""
    return f"_activity_{table}"


def _cutoff(as_of: dt.date) -> Column:
    """The first instant after the as_of day (UTC): events strictly before it are in."""
    return F.lit(as_of + dt.timedelta(days=1)).cast("timestamp")


def _within_days(column: str, as_of: dt.date, days: int, ending_days_ago: int = 0) -> Column:
    """Events in the ``days`` days that end ``ending_days_ago`` days before as_of (as_of inclusive)."""
    end = as_of - dt.timedelta(days=ending_days_ago)
    start = F.lit(end - dt.timedelta(days=days - 1)).cast("timestamp")
    return (F.col(column) >= start) & (F.col(column) < _cutoff(end))


def days_since(ts: Column, as_of: dt.date) -> Column:
    return F.datediff(F.lit(as_of), F.to_date(ts))


def _with_optional(df: DataFrame, columns: dict[str, str]) -> DataFrame:
    """``df`` with each optional column it lacks added as null of the given type."""
    missing = {c: F.lit(None).cast(t) for c, t in columns.items() if c not in df.columns}
    return df.withColumns(missing) if missing else df  # Spark Connect refuses withColumns({})


def _rate(numerator: Column, denominator: Column) -> Column:
    """numerator / denominator, null when the denominator is 0 or null."""
    return F.when(denominator > 0, numerator / denominator)


def order_features(orders: DataFrame, as_of: dt.date, channels: list[str], churned_days: int) -> DataFrame:
    """Value features from orders up to as_of, in one shuffle: a window for the gaps, then one aggregation."""
    orders = _with_optional(orders, {"discount_base": "double", "offer_code": "string", "channel": "string"})
    past = orders.where(F.col("order_ts") < _cutoff(as_of)).withColumn(
        "_sale", ~F.coalesce(F.col("is_return"), F.lit(False))
    )
    # Sales sort before returns, so lag() over sales rows gives the previous sale.
    by_customer = Window.partitionBy("customer_id").orderBy(F.col("_sale").desc(), "order_ts")
    gaps = past.withColumn(
        "_gap",
        F.when(F.col("_sale"), F.datediff(F.to_date("order_ts"), F.to_date(F.lag("order_ts").over(by_customer)))),
    )
    sale = F.col("_sale")
    sale_in = {days: sale & _within_days("order_ts", as_of, days) for days in (30, 90, 365)}
    previous_90 = sale & _within_days("order_ts", as_of, 90, ending_days_ago=90)
    year = sale_in[365]
    agg = gaps.groupBy("customer_id").agg(
        F.max(F.when(sale, F.col("order_ts"))).alias("_last_sale"),
        F.min(F.when(sale, F.col("order_ts"))).alias("_first_sale"),
        F.max("order_ts").alias(activity_column("orders")),
        *[F.count_if(sale_in[d]).alias(f"frequency_{d}d") for d in (30, 90, 365)],
        *[
            F.sum(F.when(sale_in[d], F.col("amount_base")).otherwise(0.0)).alias(f"monetary_{d}d")
            for d in (30, 90, 365)
        ],
        F.avg(F.when(sale, F.col("amount_base"))).alias("avg_order_value"),
        F.avg("_gap").alias("interpurchase_days_mean"),
        F.stddev_samp("_gap").alias("interpurchase_days_std"),
        F.max(F.when(F.col("_gap") > churned_days, F.col("order_ts"))).alias("_reactivated_at"),
        F.sum(F.when(previous_90, F.col("amount_base")).otherwise(0.0)).alias("_spend_previous_90d"),
        F.sum(F.when(year, F.col("discount_base"))).alias("_discount_365d"),
        F.sum(F.when(year, F.col("amount_base") + F.col("discount_base"))).alias("_gross_365d"),
        F.count_if(~sale & _within_days("order_ts", as_of, 365)).alias("_returns_365d"),
        F.count_if(year & F.col("offer_code").isNotNull()).alias("_offers_365d"),
        *[F.count_if(year & (F.col("channel") == c)).alias(f"_channel_{c}") for c in channels],
    )
    year_orders = F.col("frequency_365d")
    recent, previous = F.col("monetary_90d"), F.col("_spend_previous_90d")
    return agg.select(
        "customer_id",
        days_since(F.col("_last_sale"), as_of).alias("recency_days"),
        "frequency_30d",
        "frequency_90d",
        "frequency_365d",
        *[F.round(f"monetary_{d}d", 2).alias(f"monetary_{d}d") for d in (30, 90, 365)],
        F.round("avg_order_value", 2).alias("avg_order_value"),
        days_since(F.col("_first_sale"), as_of).alias("days_since_first_purchase"),
        F.round("interpurchase_days_mean", 3).alias("interpurchase_days_mean"),
        F.round("interpurchase_days_std", 3).alias("interpurchase_days_std"),
        F.round(_rate(recent - previous, recent + previous), 4).alias("spend_trend_90d"),
        F.round(_rate(F.col("_discount_365d"), F.col("_gross_365d")), 4).alias("discount_share"),
        F.round(_rate(F.col("_returns_365d"), year_orders), 4).alias("return_rate"),
        F.round(_rate(F.col("_offers_365d"), year_orders), 4).alias("offer_redemption_rate"),
        *[F.round(_rate(F.col(f"_channel_{c}"), year_orders), 4).alias(f"channel_share_{c}") for c in channels],
        days_since(F.col("_reactivated_at"), as_of).alias("_days_since_reactivation"),
        activity_column("orders"),
    )


def category_features(items: DataFrame, orders: DataFrame, as_of: dt.date, categories: list[str]) -> DataFrame:
    """Shares of item spend per top category, and the entropy of spend over all categories (365 days)."""
    sale_times = orders.where(~F.coalesce(F.col("is_return"), F.lit(False))).select("order_id", "order_ts")
    spend = (
        items.where(F.col("category").isNotNull() & (F.col("line_amount_base") > 0))
        .join(sale_times, "order_id")
        .where(_within_days("order_ts", as_of, 365))
        .groupBy("customer_id", "category")
        .agg(F.sum("line_amount_base").alias("a"))
    )
    per_customer = spend.groupBy("customer_id").agg(
        F.sum("a").alias("_total"),
        F.sum(F.col("a") * F.log2("a")).alias("_a_log_a"),
        *[F.sum(F.when(F.col("category") == c, F.col("a")).otherwise(0.0)).alias(f"_cat_{c}") for c in categories],
    )
    total = F.col("_total")
    # H = -sum(p log2 p) with p = a / T, rearranged so one pass suffices: log2 T - sum(a log2 a) / T.
    return per_customer.select(
        "customer_id",
        *[F.round(F.col(f"_cat_{c}") / total, 4).alias(f"category_share_{c}") for c in categories],
        F.round(F.greatest(F.lit(0.0), F.log2(total) - F.col("_a_log_a") / total), 4).alias("category_entropy"),
    )


def web_features(web: DataFrame, orders: DataFrame, as_of: dt.date, cfg: FeaturesConfig) -> DataFrame:
    """Browsing over 90 days, cart abandonment, and the last web event of any age."""
    past = web.where(F.col("customer_id").isNotNull() & (F.col("event_ts") < _cutoff(as_of)))
    recent = _within_days("event_ts", as_of, 90)

    def count(event_type: str) -> Column:
        return F.count_if(recent & (F.col("event_type") == event_type))

    browsing = past.groupBy("customer_id").agg(
        F.count_distinct(F.when(recent, F.col("session_id"))).alias("web_sessions_90d"),
        count("page_view").alias("_page_views"),
        count("product_view").alias("product_views_90d"),
        count("search").alias("searches_90d"),
        count("add_to_cart").alias("cart_adds_90d"),
        count("wishlist_add").alias("wishlist_adds_90d"),
        count("checkout_start").alias("checkout_starts_90d"),
        F.max("event_ts").alias(activity_column("web_events")),
    )
    browsing = browsing.withColumn(
        "pages_per_session_90d", F.round(_rate(F.col("_page_views"), F.col("web_sessions_90d")), 3)
    ).drop("_page_views")
    return browsing.join(cart_abandonment(past, orders, as_of, cfg), "customer_id", "left")


def cart_abandonment(web: DataFrame, orders: DataFrame, as_of: dt.date, cfg: FeaturesConfig) -> DataFrame:
    """Share of add-to-carts (90 days) with no purchase event in their session and no order within N hours.

    Only orders up to as_of count, so an add-to-cart late on as_of cannot see the future.
    """
    adds = web.where(_within_days("event_ts", as_of, 90) & (F.col("event_type") == "add_to_cart"))
    purchase_sessions = (
        web.where(F.col("event_type").isin(cfg.purchase_events))
        .select("session_id")
        .distinct()
        .withColumn("_bought", F.lit(True))
    )
    sales = orders.where(~F.coalesce(F.col("is_return"), F.lit(False)) & (F.col("order_ts") < _cutoff(as_of)))
    timeline = (
        adds.join(purchase_sessions, "session_id", "left")
        .select(
            "customer_id",
            F.col("event_ts").alias("ts"),
            F.lit(0).alias("_kind"),
            F.coalesce("_bought", F.lit(False)).alias("_bought"),
        )
        .unionByName(
            sales.select(
                "customer_id", F.col("order_ts").alias("ts"), F.lit(1).alias("_kind"), F.lit(False).alias("_bought")
            )
        )
    )
    # An order at the same instant as the add sorts after it (kind 1 > 0), so it counts as following.
    following = (
        Window.partitionBy("customer_id")
        .orderBy("ts", "_kind")
        .rowsBetween(Window.currentRow, Window.unboundedFollowing)
    )
    next_order = F.min(F.when(F.col("_kind") == 1, F.col("ts"))).over(following)
    horizon = F.col("ts") + F.make_interval(hours=F.lit(cfg.cart_conversion_hours))
    flagged = timeline.withColumn("_next_order", next_order).where(F.col("_kind") == 0)
    converted = F.col("_bought") | (F.col("_next_order") <= horizon)
    return flagged.groupBy("customer_id").agg(
        F.round(F.count_if(~F.coalesce(converted, F.lit(False))) / F.count("*"), 4).alias("cart_abandonment_rate")
    )


def email_features(email: DataFrame, as_of: dt.date) -> DataFrame:
    """Unique open, click and unsubscribe rates per email sent (365 days), and the last open or click."""
    past = email.where(F.col("event_ts") < _cutoff(as_of))
    year = _within_days("event_ts", as_of, 365)
    message = (
        F.coalesce(F.col("campaign_id"), F.col("event_id")) if "campaign_id" in email.columns else F.col("event_id")
    )

    def messages(event_type: str) -> Column:
        return F.count_distinct(F.when(year & (F.col("event_type") == event_type), message))

    agg = past.groupBy("customer_id").agg(
        messages("sent").alias("_sent"),
        messages("open").alias("_opened"),
        messages("click").alias("_clicked"),
        messages("unsubscribe").alias("_unsubscribed"),
        F.max(F.when(F.col("event_type").isin("open", "click"), F.col("event_ts"))).alias(
            activity_column("email_events")
        ),
    )
    sent = F.col("_sent")
    return agg.select(
        "customer_id",
        F.round(_rate(F.least(F.col("_opened"), sent), sent), 4).alias("email_open_rate"),
        F.round(_rate(F.least(F.col("_clicked"), sent), sent), 4).alias("email_click_rate"),
        F.round(_rate(F.least(F.col("_unsubscribed"), sent), sent), 4).alias("email_unsubscribe_rate"),
        activity_column("email_events"),
    )


def support_features(tickets: DataFrame, as_of: dt.date) -> DataFrame:
    past = tickets.where(F.col("created_at") < _cutoff(as_of))
    year = _within_days("created_at", as_of, 365)
    return past.groupBy("customer_id").agg(
        F.count_if(year).alias("support_tickets_365d"),
        F.round(F.avg(F.when(year, F.col("satisfaction"))), 3).alias("support_satisfaction_mean"),
        F.max("created_at").alias(activity_column("support_tickets")),
    )


def survey_features(surveys: DataFrame, as_of: dt.date) -> DataFrame:
    answered = surveys.where((F.col("submitted_at") < _cutoff(as_of)) & F.col("nps").isNotNull())
    return answered.groupBy("customer_id").agg(
        F.max_by("nps", "submitted_at").alias("nps_latest"),
        F.max("submitted_at").alias(activity_column("survey_responses")),
    )


def eligible_customers(customers: DataFrame, as_of: dt.date) -> DataFrame:
    """Customers known at as_of who allow profiling."""
    return customers.where(
        (F.col("signup_date") <= F.lit(as_of)) & F.coalesce(F.col("consent_profiling"), F.lit(False))
    ).select("customer_id", "signup_date")
