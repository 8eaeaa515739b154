"""Generated web, email, support and survey events."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from microseg.runtime.config import DatagenConfig
from microseg.synthetic.groups import FUTURE_YEAR, int_between, pick, ts, uniform
from microseg.synthetic.people import email_address


def web_events_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """Web sessions of 2 to 6 events, plus a purchase in converting ones; some are anonymous (no customer_ref)."""
    seed = cfg.seed
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
        uniform(seed, "session_day", "session_id")
        * (F.least(F.col("last_offset") + 30, F.lit(horizon)) - F.col("signup_offset") + 1)
    )
    return session_events(sessions, day, cfg)


def session_events(sessions: DataFrame, day: Column, cfg: DatagenConfig) -> DataFrame:
    """The events of each web session of ``sessions`` (session_id, id, customer_ref, cart_add_rate,
    cart_conversion), which starts ``day`` days after start_date; with future-dated copies planted."""
    seed, start = cfg.seed, cfg.start_date
    sessions = sessions.withColumns(
        {
            "session_start": ts(day, start, uniform(seed, "session_time", "session_id") * 0.9),
            "logged_in": uniform(seed, "logged_in", "session_id") < 0.7,
            "n_events": int_between(uniform(seed, "n_events", "session_id"), 2, 6),
            "converts": uniform(seed, "converts", "session_id") < F.col("cart_conversion"),
        }
    )
    # A converting session ends with one more event: the purchase.
    last_event = F.col("n_events") + F.col("converts").cast("int")
    events = sessions.select("*", F.explode(F.sequence(F.lit(1), last_event)).alias("event_no")).withColumn(
        "event_id", F.format_string("E%s-%d", F.col("session_id"), F.col("event_no"))
    )
    u_type = uniform(seed, "event_type", "event_id")
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
        pick(uniform(seed, "device", "session_id"), ["web", "app"]).alias("channel"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    future = clean.where(uniform(seed, "future_web", "event_id") < cfg.dirt.future_timestamp).withColumns(
        {
            "event_id": F.concat(F.lit("DFUT-"), F.col("event_id")),
            "event_ts": F.make_timestamp(F.lit(FUTURE_YEAR), F.lit(6), F.lit(1), F.lit(12), F.lit(0), F.lit(0)),
            "_dirt": F.lit("future_timestamp"),
        }
    )
    return clean.unionByName(future)


def email_events_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """Campaign sends, opens, clicks and unsubscribes keyed by email address (as an ESP exports them)."""
    horizon = (cfg.end_date - cfg.start_date).days
    reachable = customers.where(F.col("consent_email") & ~F.col("dirty_email"))
    sends = reachable.select(
        "id",
        "customer_ref",
        "signup_offset",
        "email_open",
        "email_click",
        email_address(F.col("first_name"), F.col("last_name"), F.col("id")).alias("email"),
        F.explode(F.sequence(F.lit(1), F.lit(24))).alias("campaign_no"),
    )
    # Campaigns go out twice a month; a customer receives those after signing up.
    sends = sends.withColumn("campaign_day", F.floor(F.col("campaign_no") * F.lit(horizon / 24.5)).cast("int")).where(
        F.col("campaign_day") >= F.col("signup_offset")
    )
    sends = sends.withColumns(
        {
            "send_key": F.concat_ws("-", "customer_ref", "campaign_no"),
            "send_id": F.format_string("M%s-%02d", F.col("customer_ref"), F.col("campaign_no")),
            "campaign_id": F.format_string("CMP%03d", F.col("campaign_no")),
        }
    )
    return campaign_events(sends, cfg)


def campaign_events(sends: DataFrame, cfg: DatagenConfig) -> DataFrame:
    """Each send of ``sends`` (send_key, send_id, campaign_id, campaign_day, email, email_open, email_click) and
    the opens, clicks and unsubscribes it draws; with orphan copies (unknown addresses) planted."""
    seed, start = cfg.seed, cfg.start_date
    opened = uniform(seed, "open", "send_key") < F.col("email_open")
    clicked = opened & (uniform(seed, "click", "send_key") < F.col("email_click") / F.col("email_open"))
    unsubscribed = uniform(seed, "unsub", "send_key") < 0.003
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
        F.format_string("%s-%d", F.col("send_id"), F.col("pos")).alias("event_id"),
        "email",
        "campaign_id",
        "event_type",
        ts(F.col("campaign_day"), start, F.lit(0.375) + F.col("pos") * 0.05).alias("event_ts"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    orphans = clean.where(uniform(seed, "orphan_email", "event_id") < cfg.dirt.orphan_reference).withColumns(
        {
            "event_id": F.concat(F.lit("DORP-"), F.col("event_id")),
            "email": F.concat(F.lit("unknown."), F.col("email")),
            "_dirt": F.lit("orphan_reference"),
        }
    )
    return clean.unionByName(orphans)


def support_tickets_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    seed = cfg.seed
    tickets = customers.select(
        "customer_ref",
        "signup_offset",
        "last_offset",
        F.explode(F.sequence(F.lit(0), int_between(uniform(seed, "n_tickets", "id"), 0, 3))).alias("ticket_no"),
    ).where(F.col("ticket_no") > 0)
    tickets = tickets.withColumn("ticket_id", F.format_string("T%s-%d", F.col("customer_ref"), F.col("ticket_no")))
    day = F.col("signup_offset") + F.floor(
        uniform(seed, "ticket_day", "ticket_id") * (F.col("last_offset") - F.col("signup_offset") + 1)
    )
    return ticket_rows(tickets, day, cfg)


def ticket_rows(tickets: DataFrame, day: Column, cfg: DatagenConfig) -> DataFrame:
    """One support ticket per row of ``tickets`` (ticket_id, customer_ref), opened ``day`` days after
    start_date; with orphan copies (unknown customer_ref) planted."""
    seed, start = cfg.seed, cfg.start_date
    clean = tickets.select(
        "ticket_id",
        "customer_ref",
        ts(day, start, uniform(seed, "ticket_time", "ticket_id")).alias("created_at"),
        pick(uniform(seed, "ticket_channel", "ticket_id"), ["email", "phone", "chat"]).alias("channel"),
        pick(uniform(seed, "ticket_topic", "ticket_id"), ["delivery", "returns", "payment", "product"]).alias("topic"),
        int_between(uniform(seed, "csat", "ticket_id"), 1, 5).alias("satisfaction"),
        F.lit(None).cast("string").alias("_dirt"),
    )
    orphans = clean.where(uniform(seed, "orphan_ticket", "ticket_id") < cfg.dirt.orphan_reference * 10).withColumns(
        {
            "ticket_id": F.concat(F.lit("DORP-"), F.col("ticket_id")),
            "customer_ref": F.concat(F.lit("CX"), F.col("customer_ref")),
            "_dirt": F.lit("orphan_reference"),
        }
    )
    return clean.unionByName(orphans)


def survey_frame(customers: DataFrame, cfg: DatagenConfig) -> DataFrame:
    seed = cfg.seed
    horizon = (cfg.end_date - cfg.start_date).days
    answered = customers.where(uniform(seed, "survey", "id") < 0.25)
    day = F.least(F.lit(horizon), F.col("signup_offset") + F.floor(uniform(seed, "survey_day", "id") * 120))
    return survey_rows(
        answered.withColumn("response_id", F.format_string("R%s", F.col("customer_ref"))), day, "id", cfg
    )


def survey_rows(answers: DataFrame, day: Column, key: str, cfg: DatagenConfig) -> DataFrame:
    """One survey response per row of ``answers`` (response_id, customer_ref, nps_range), submitted ``day``
    days after start_date; time of day and score drawn from column ``key``."""
    seed, start = cfg.seed, cfg.start_date
    return answers.select(
        "response_id",
        "customer_ref",
        ts(day, start, uniform(seed, "survey_time", key)).alias("submitted_at"),
        (
            F.col("nps_range")[0]
            + F.floor(uniform(seed, "nps", key) * (F.col("nps_range")[1] - F.col("nps_range")[0] + 1))
        )
        .cast("int")
        .alias("nps"),
        F.lit(None).cast("string").alias("_dirt"),
    )
