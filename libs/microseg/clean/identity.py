"""Identity resolution, all of it: which customer each source record belongs to.

The identity map (silver.identity_map) links every deterministic key (a CRM id, an email hash, a
phone hash, a web anonymous id) to its one customer; keys that point at several customers go to
ops.identity_conflicts instead, reported and never guessed. Clean stages the map as soon as it
has staged customers, and the cleaners of later sources link their records through it
(``identity_keys``, ``crm_links``, ``email_links``); once the web events are staged, their
anonymous ids are added. The quality gate publishes it with the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from microseg.runtime import lake
from microseg.runtime.lake import Table
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


def identity_keys(read: Callable[[Table], DataFrame]) -> DataFrame:
    """Every key as ``read`` gives the map and the conflicts, with all its customers."""
    single = read(lake.IDENTITY_MAP).select("key_type", "key_value", F.array("customer_id").alias("customer_ids"))
    return single.unionByName(read(lake.IDENTITY_CONFLICTS).select(*single.columns))


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


def stage_identity_map(
    customers: DataFrame, web_events: DataFrame | None, write: Callable[[DataFrame, Table], object]
) -> dict:
    """Build the identity map and the identity conflicts from ``customers`` and, when given (once the web
    events are cleaned), the anonymous ids of ``web_events``; ``write`` (frame, table) stages each.

    Returns counts of linked keys and conflicts by key type.
    """
    keys = [_linked_keys(customers, c) for c in CUSTOMER_KEYS]
    if web_events is not None:
        keys.append(_linked_keys(web_events.where(F.col("customer_id").isNotNull()), "anonymous_id"))
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
        write(single, lake.IDENTITY_MAP)
        write(conflicts, lake.IDENTITY_CONFLICTS)
    return {
        "linked_keys": {r["key_type"]: r["count"] for r in by_type if r["one"]},
        "conflicts": {r["key_type"]: r["count"] for r in by_type if r["several"]},
    }
