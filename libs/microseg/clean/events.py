"""Events: web clickstream, email engagement, support tickets and survey responses, linked to customers."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from microseg.clean.identity import anonymous_links, crm_links, email_links
from microseg.ingest.standardise import clean_code
from microseg.quality.rules import Rule, flag_rules, future, malformed, missing, orphan
from microseg.runtime.lake import CORRUPT


def clean_web_events(df: DataFrame, keys: DataFrame, history: bool) -> DataFrame:
    """Logged-in events link by customer_ref; anonymous ones through the logins of their anonymous_id in their
    batch or an earlier one (``anonymous_links``; ``history``: earlier batches are published, not in ``df``)."""
    links = anonymous_links(df.where(F.col(CORRUPT).isNull()), keys, history)
    joined = df.join(crm_links(keys), on="customer_ref", how="left")
    joined = joined.join(links, on=["anonymous_id", "_batch_id"], how="left").withColumn(
        "customer_id", F.coalesce("customer_id", F.when(F.col("customer_ref").isNull(), F.col("_linked_id")))
    )
    rules = [
        malformed(),
        missing("event_id"),
        future("event_ts"),
        Rule(
            "orphan_reference",
            "logged-in customer_ref is not in silver",
            F.col("customer_ref").isNotNull() & F.col("customer_id").isNull(),
        ),
    ]
    return flag_rules(joined.drop("_linked_id"), rules)


def web_events_table(good: DataFrame) -> DataFrame:
    return good.select(
        "event_id",
        "customer_id",
        "anonymous_id",
        "session_id",
        "event_ts",
        F.lower(clean_code("event_type")).alias("event_type"),
        F.lower(clean_code("channel")).alias("channel"),
        "_batch_id",
    )


def clean_email_events(df: DataFrame, keys: DataFrame) -> DataFrame:
    """Email events link to the one CRM customer with the same (hashed) address."""
    joined = df.join(email_links(keys), on="email_hash", how="left")
    rules = [
        malformed(),
        missing("email_hash", "missing_email", "no valid email address"),
        Rule("ambiguous_identity", "email belongs to more than one CRM customer", F.col("_owners") > 1),
        orphan("customer_id", "customer (by email)"),
    ]
    return flag_rules(joined, rules)


def email_events_table(good: DataFrame) -> DataFrame:
    return good.select(
        "event_id",
        "customer_id",
        "campaign_id",
        F.lower(clean_code("event_type")).alias("event_type"),
        "event_ts",
        "_batch_id",
    )


def clean_by_customer_ref(df: DataFrame, keys: DataFrame, time_column: str) -> DataFrame:
    joined = df.join(crm_links(keys), on="customer_ref", how="left")
    return flag_rules(joined, [malformed(), future(time_column), orphan("customer_id", "customer")])


def tickets_table(good: DataFrame) -> DataFrame:
    return good.select(
        "ticket_id",
        "customer_id",
        "created_at",
        F.lower(clean_code("channel")).alias("channel"),
        F.lower(clean_code("topic")).alias("topic"),
        "satisfaction",
        "_batch_id",
    )


def surveys_table(good: DataFrame) -> DataFrame:
    return good.select("response_id", "customer_id", "submitted_at", "nps", "_batch_id")
