"""Identity resolution, all of it: which customer each source record belongs to.

The identity map (silver.identity_map) links every deterministic key (a CRM id, an email hash, a
phone hash, a web anonymous id) to its one customer; keys that point at several customers go to
ops.identity_conflicts instead, reported and never guessed. Clean writes the map as soon as
silver.customers is written, and the cleaners of later sources link their records through it
(``identity_keys``, ``crm_links``, ``email_links``); once the web events are cleaned, their
anonymous ids are added.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import lake, tables
from microseg.runtime.config import Config
from microseg.runtime.sparkops import cached

CUSTOMER_KEYS = ("crm_id", "email_hash", "phone_hash")  # the identifier columns of silver.customers


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


def _linked_keys(records: DataFrame, column: str) -> DataFrame:
    """(key_type, key_value, customer_ids) for one identifier column of records that carry customer_id."""
    return (
        records.where(F.col(column).isNotNull())
        .groupBy(F.col(column).alias("key_value"))
        .agg(F.array_sort(F.collect_set("customer_id")).alias("customer_ids"))
        .select(F.lit(column).alias("key_type"), "key_value", "customer_ids")
    )


def identity_keys(spark: SparkSession, cfg: Config) -> DataFrame:
    """Every key as written, with all its customers: the map's links and the conflicts' keys."""
    single = tables.read(spark, cfg, lake.IDENTITY_MAP).select(
        "key_type", "key_value", F.array("customer_id").alias("customer_ids")
    )
    return single.unionByName(tables.read(spark, cfg, lake.IDENTITY_CONFLICTS).select(*single.columns))


def crm_links(keys: DataFrame) -> DataFrame:
    """customer_ref -> customer_id, by CRM id (a customer id is derived from its CRM id: one each)."""
    return keys.where(F.col("key_type") == "crm_id").select(
        F.col("key_value").alias("customer_ref"), F.col("customer_ids")[0].alias("customer_id")
    )


def email_links(keys: DataFrame) -> DataFrame:
    """email_hash -> its number of customers (``_owners``) and the first of them (``customer_id``)."""
    return keys.where(F.col("key_type") == "email_hash").select(
        F.col("key_value").alias("email_hash"),
        F.size("customer_ids").alias("_owners"),
        F.col("customer_ids")[0].alias("customer_id"),
    )


def write_identity_map(spark: SparkSession, cfg: Config, anonymous_ids: bool) -> dict:
    """Write the identity map and the identity conflicts from silver.customers and, with
    ``anonymous_ids`` (once the web events are cleaned), from silver.web_events' anonymous ids.

    Returns counts of linked keys and conflicts by key type.
    """
    customers = tables.read(spark, cfg, lake.CUSTOMERS)
    keys = [_linked_keys(customers, c) for c in CUSTOMER_KEYS]
    if anonymous_ids and tables.exists(spark, cfg, lake.WEB_EVENTS):
        web = tables.read(spark, cfg, lake.WEB_EVENTS).where(F.col("customer_id").isNotNull())
        keys.append(_linked_keys(web, "anonymous_id"))
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
