"""Orders and order items, from separate order and item sources or from one line-level log."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg.clean.identity import crm_links
from microseg.ingest.standardise import clean_code, rate_column
from microseg.quality.rules import (
    Rule,
    flag_rules,
    future,
    malformed,
    missing,
    orphan,
    unknown_currency,
)
from microseg.runtime.keys import customer_id_from_crm


def clean_order_lines(
    df: DataFrame, keys: DataFrame | None, rates: dict[str, float], product_pattern: str | None
) -> DataFrame:
    """Lines of invoices (``is_return`` from the mapping's returns_when); lines without a customer key, and lines
    with a negative quantity that the mapping does not call returns, are quarantined."""
    prepared = df.withColumns(
        {
            "customer_ref": clean_code("customer_ref"),
            "_rate": rate_column(F.col("currency"), rates),
            "is_product": F.col("product_id").rlike(product_pattern) if product_pattern else F.lit(True),
        }
    )
    if keys is not None:
        prepared = prepared.join(crm_links(keys), on="customer_ref", how="left")
    else:
        prepared = prepared.withColumn("customer_id", customer_id_from_crm(F.col("customer_ref")))
    rules = [
        malformed(),
        missing("customer_ref", "no_customer_key", "no customer key"),
        Rule("negative_price", "unit price is negative (an adjustment such as bad debt)", F.col("unit_price") < 0),
        Rule(
            "negative_quantity",
            "quantity is negative on a line that is not a return (returns_when in the source mapping says which are)",
            (F.col("quantity") < 0) & ~F.col("is_return"),
        ),
        future("order_ts"),
        unknown_currency(),
        orphan("customer_id", "customer"),
    ]
    return flag_rules(prepared, rules)


def _line_amount() -> Column:
    return F.round(F.col("quantity") * F.col("unit_price") * F.col("_rate"), 2)


def line_items_table(good: DataFrame) -> DataFrame:
    line_no = F.row_number().over(
        Window.partitionBy("order_id").orderBy("product_id", "quantity", "unit_price", "_source_file")
    )
    return good.select(
        "order_id",
        "customer_id",
        line_no.alias("line_no"),
        F.upper(clean_code("product_id")).alias("product_id"),
        # Free text nothing downstream reads: white space only, no Unicode normalisation (a Python UDF per line).
        clean_code("description").alias("description"),
        F.lit(None).cast("string").alias("category"),
        "quantity",
        "unit_price",
        _line_amount().alias("line_amount_base"),
        "is_return",
        "is_product",
        "_batch_id",
    )


def line_orders_table(good: DataFrame) -> DataFrame:
    """One order per invoice; its amount is the sum of its product lines (charges and fees excluded)."""
    product_amount = F.when(F.col("is_product"), F.col("quantity") * F.col("unit_price")).otherwise(0.0)
    return good.groupBy("order_id", "customer_id").agg(
        F.min("order_ts").alias("order_ts"),
        F.first(F.upper("currency"), ignorenulls=True).alias("currency"),
        F.round(F.sum(product_amount), 2).alias("amount"),
        F.round(F.sum(product_amount * F.col("_rate")), 2).alias("amount_base"),
        F.lit(None).cast("double").alias("discount_base"),  # invoice lines carry no discount
        F.coalesce(F.first(F.lower(clean_code("channel")), ignorenulls=True), F.lit("web")).alias("channel"),
        F.max("is_return").alias("is_return"),
        F.lit(None).cast("string").alias("offer_code"),
        F.min("_batch_id").alias("_batch_id"),
    )


def clean_orders(df: DataFrame, keys: DataFrame, rates: dict[str, float]) -> DataFrame:
    joined = df.join(crm_links(keys), on="customer_ref", how="left").withColumn(
        "_rate", rate_column(F.col("currency"), rates)
    )
    rules = [
        malformed(),
        missing("order_id"),
        Rule("negative_amount", "order amount is negative", F.col("amount") < 0),
        future("order_ts"),
        unknown_currency(),
        orphan("customer_id", "customer"),
    ]
    return flag_rules(joined, rules)


def orders_table(good: DataFrame) -> DataFrame:
    return good.select(
        "order_id",
        "customer_id",
        "order_ts",
        F.upper("currency").alias("currency"),
        "amount",
        F.round(F.col("amount") * F.col("_rate"), 2).alias("amount_base"),
        F.round(F.coalesce(F.col("discount"), F.lit(0.0)) * F.col("_rate"), 2).alias("discount_base"),
        F.lower(clean_code("channel")).alias("channel"),
        F.coalesce(F.col("is_return"), F.lit(False)).alias("is_return"),
        F.upper(clean_code("offer_code")).alias("offer_code"),
        "_batch_id",
    )


def clean_order_items(df: DataFrame, orders: DataFrame) -> DataFrame:
    parents = orders.select(
        "order_id",
        "customer_id",
        F.when(F.col("amount") != 0, F.col("amount_base") / F.col("amount")).alias("_rate"),
        "is_return",
    )
    joined = df.join(parents, on="order_id", how="left")
    return flag_rules(joined, [malformed(), missing("order_id"), orphan("customer_id", "order")])


def items_table(good: DataFrame) -> DataFrame:
    return good.select(
        "order_id",
        "customer_id",
        "line_no",
        F.upper(clean_code("product_id")).alias("product_id"),
        clean_code("description").alias("description"),  # as in line_items_table: white space only
        F.lower(clean_code("category")).alias("category"),
        "quantity",
        "unit_price",
        F.round(F.col("quantity") * F.col("unit_price") * F.coalesce(F.col("_rate"), F.lit(1.0)), 2).alias(
            "line_amount_base"
        ),
        F.coalesce(F.col("is_return"), F.lit(False)).alias("is_return"),
        F.lit(True).alias("is_product"),
        "_batch_id",
    )
