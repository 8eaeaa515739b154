"""Identity resolution: deterministic customer ids and the links from source records to them."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import lake, tables
from microseg.runtime.config import Config
from microseg.runtime.sparkops import cached


def anonymous_links(web_events: DataFrame) -> DataFrame:
    """anonymous_id -> customer_ref, learnt from logged-in events; ids seen with two refs are dropped.

    Returns columns anonymous_id, linked_ref (one row per anonymous id that links to exactly one ref).
    """
    return (
        web_events.where(F.col("customer_ref").isNotNull() & F.col("anonymous_id").isNotNull())
        .groupBy("anonymous_id")
        .agg(F.countDistinct("customer_ref").alias("refs"), F.min("customer_ref").alias("linked_ref"))
        .where(F.col("refs") == 1)
        .select("anonymous_id", "linked_ref")
    )


def _linked_keys(customers: DataFrame, column: str) -> DataFrame:
    """(key, customer_ids) for one identifier column of silver.customers."""
    return (
        customers.where(F.col(column).isNotNull())
        .groupBy(F.col(column).alias("key_value"))
        .agg(F.array_sort(F.collect_set("customer_id")).alias("customer_ids"))
        .withColumn("key_type", F.lit(column))
    )


def write_identity_map(spark: SparkSession, cfg: Config) -> dict:
    """Write the identity map: every deterministic key -> its one customer_id; and the identity
    conflicts: keys that point at several customers (reported, never guessed).

    Returns counts of linked keys and conflicts by key type.
    """
    customers = tables.read(spark, cfg, lake.CUSTOMERS)
    keys = [_linked_keys(customers, c) for c in ("crm_id", "email_hash", "phone_hash")]
    if tables.exists(spark, cfg, lake.WEB_EVENTS):
        web = tables.read(spark, cfg, lake.WEB_EVENTS).where(F.col("customer_id").isNotNull())
        keys.append(
            web.where(F.col("anonymous_id").isNotNull())
            .groupBy(F.col("anonymous_id").alias("key_value"))
            .agg(F.array_sort(F.collect_set("customer_id")).alias("customer_ids"))
            .withColumn("key_type", F.lit("anonymous_id"))
        )
    all_keys = keys[0]
    for frame in keys[1:]:
        all_keys = all_keys.unionByName(frame)
    with cached(all_keys) as linked:
        one, several = F.size("customer_ids") == 1, F.size("customer_ids") > 1
        by_type = linked.groupBy("key_type", one.alias("one"), several.alias("several")).count().collect()
        single = linked.where(one).select("key_type", "key_value", F.col("customer_ids")[0].alias("customer_id"))
        conflicts = linked.where(several).select(
            "key_type", "key_value", "customer_ids", F.size("customer_ids").alias("customers")
        )
        tables.overwrite(single, cfg, lake.IDENTITY_MAP)
        tables.overwrite(conflicts, cfg, lake.IDENTITY_CONFLICTS)
    return {
        "linked_keys": {r["key_type"]: r["count"] for r in by_type if r["one"]},
        "conflicts": {r["key_type"]: r["count"] for r in by_type if r["several"]},
    }
