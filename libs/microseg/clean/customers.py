"""Customers: the CRM's records standardised, one row per customer, duplicates superseded."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg.ingest.standardise import clean_code, with_country_code
from microseg.quality.rules import Rule, flag_rules, malformed, missing
from microseg.runtime.keys import customer_id_from_crm
from microseg.runtime.lake import CORRUPT


def clean_customers(df: DataFrame, aliases: dict[str, str | None]) -> DataFrame:
    """Standardise CRM rows; of several rows per CRM id the latest updated_at wins, the rest are quarantined."""
    latest_first = F.row_number().over(
        Window.partitionBy("customer_ref").orderBy(F.col("updated_at").desc_nulls_last(), F.col("_source_file"))
    )
    prepared = with_country_code(
        df.withColumn("customer_ref", clean_code("customer_ref")), "country", "country_code", aliases
    ).withColumn("_rank", F.when(F.col(CORRUPT).isNull() & F.col("customer_ref").isNotNull(), latest_first))
    rules = [
        malformed(),
        missing("customer_ref"),
        Rule("superseded_duplicate", "an older CRM row of a customer_ref with a newer updated_at", F.col("_rank") > 1),
    ]
    return flag_rules(prepared, rules).withColumn("customer_id", customer_id_from_crm(F.col("customer_ref")))


def customers_table(good: DataFrame) -> DataFrame:
    return good.select(
        "customer_id",
        F.col("customer_ref").alias("crm_id"),
        "email_hash",
        "phone_hash",
        "email_valid",
        "phone_valid",
        F.col("country_code").alias("country"),
        "signup_date",
        "updated_at",
        "consent_email",
        "consent_sms",
        "consent_profiling",
        "_batch_id",
    )


def line_customers_table(aliases: dict[str, str | None]) -> Callable[[DataFrame], DataFrame]:
    """Customers known only from their orders (no CRM source): no identifiers beyond the shop's key."""

    def build(good: DataFrame) -> DataFrame:
        by_country = (
            good.groupBy("customer_id", "country")
            .count()
            .withColumn(
                "_pick",
                F.row_number().over(Window.partitionBy("customer_id").orderBy(F.desc("count"), F.asc("country"))),
            )
            .where(F.col("_pick") == 1)
            .select("customer_id", "country")
        )
        customers = good.groupBy("customer_id").agg(
            F.first("customer_ref").alias("crm_id"),
            F.to_date(F.min("order_ts")).alias("signup_date"),
            F.max("order_ts").alias("updated_at"),
            F.coalesce(F.max("consent_profiling"), F.lit(True)).alias("consent_profiling"),
            F.max("_batch_id").alias("_batch_id"),  # the latest batch with a line of the customer
        )
        with_country = with_country_code(customers.join(by_country, "customer_id", "left"), "country", "iso", aliases)
        return with_country.select(
            "customer_id",
            "crm_id",
            F.lit(None).cast("string").alias("email_hash"),
            F.lit(None).cast("string").alias("phone_hash"),
            F.lit(None).cast("boolean").alias("email_valid"),
            F.lit(None).cast("boolean").alias("phone_valid"),
            F.col("iso").alias("country"),
            "signup_date",
            "updated_at",
            F.lit(None).cast("boolean").alias("consent_email"),
            F.lit(None).cast("boolean").alias("consent_sms"),
            "consent_profiling",
            "_batch_id",
        )

    return build
