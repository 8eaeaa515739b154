"""Identity resolution, all of it: which customer each source record belongs to.

The identity map (silver.identity_map) links every deterministic key (a CRM id, an email hash, a
phone hash, a web anonymous id) to its one customer; keys that point at several customers go to
ops.identity_conflicts instead, reported and never guessed. Clean stages the map as soon as it
has staged customers, and the cleaners of later sources link their records through it
(``identity_keys``, ``crm_links``, ``email_links``); once the web events are staged, their
anonymous ids are added. The quality gate publishes it with the rest.

A daily run does not rebuild the map: ``stage_identity_changes`` recomputes only the keys the run's staged
customers touch (their key values now and before) and the anonymous ids of its staged web events, and stages
their new state, null where a key leaves a table, for a MERGE into the map and the conflicts. The map is
rebuilt from all of silver (``stage_identity_map``) on a first run, a --full-refresh, and when the customers
or the web events are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from microseg.runtime import lake
from microseg.runtime.lake import Table
from microseg.runtime.sparkops import cached

CUSTOMER_KEYS = ("crm_id", "email_hash", "phone_hash")  # the identifier columns of silver.customers


def anonymous_links(web_events: DataFrame, keys: DataFrame, history: bool) -> DataFrame:
    """(anonymous_id, _batch_id, _linked_id): the one customer of an anonymous id, for its events of a batch.

    An anonymous id's customers, for a batch, are those of its logged-in events (by customer_ref, through
    ``keys``) in that batch or an earlier one: in ``web_events``, and with ``history`` (a daily run, which
    cleans only new batches) the customers ``keys`` holds for the id, learnt from the published batches. An
    id with several customers links none. A rebuild sees every batch in ``web_events`` (``history`` False), so
    it finds each event the link the daily runs found.
    """
    logins = (
        web_events.where(F.col("customer_ref").isNotNull() & F.col("anonymous_id").isNotNull())
        .join(crm_links(keys), "customer_ref")
        .select("anonymous_id", F.col("_batch_id").alias("_login_batch"), "customer_id")
    )
    anonymous = web_events.where(F.col("customer_ref").isNull() & F.col("anonymous_id").isNotNull())
    anonymous = anonymous.select("anonymous_id", "_batch_id").distinct()
    found = (
        anonymous.join(logins, "anonymous_id")
        .where(F.col("_login_batch") <= F.col("_batch_id"))
        .select("anonymous_id", "_batch_id", "customer_id")
    )
    if history:
        known = keys.where(F.col("key_type") == "anonymous_id").select(
            F.col("key_value").alias("anonymous_id"), F.explode("customer_ids").alias("customer_id")
        )
        found = found.unionByName(anonymous.join(known, "anonymous_id"))
    return (
        found.groupBy("anonymous_id", "_batch_id")
        .agg(F.countDistinct("customer_id").alias("_customers"), F.min("customer_id").alias("_linked_id"))
        .where(F.col("_customers") == 1)
        .drop("_customers")
    )


def _linked_keys(records: DataFrame, column: str) -> DataFrame:
    """(key_type, key_value, customer_ids) for one identifier column of records that carry customer_id."""
    return (
        records.where(F.col(column).isNotNull())
        .groupBy(F.col(column).alias("key_value"))
        .agg(F.array_sort(F.collect_set("customer_id")).alias("customer_ids"))
        .select(F.lit(column).alias("key_type"), "key_value", "customer_ids")
    )


def _customer_keys(customers: DataFrame) -> DataFrame:
    """(customer_id, key_type, key_value): each identifier (``CUSTOMER_KEYS``) a customer row holds, one row each."""
    pairs = [F.struct(F.lit(c).alias("key_type"), F.col(c).alias("key_value")) for c in CUSTOMER_KEYS]
    rows = customers.select("customer_id", F.explode(F.array(*pairs)).alias("_key"))
    return rows.select("customer_id", "_key.key_type", "_key.key_value").where(F.col("key_value").isNotNull())


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


def stage_identity_changes(
    customers_now: DataFrame,
    customers_before: DataFrame,
    staged_customers: DataFrame | None,
    staged_web_events: DataFrame | None,
    keys_before: DataFrame,
    write: Callable[[DataFrame, Table], object],
) -> dict:
    """Stage the new state of every key this run's staged rows touch, as ``stage_identity_map`` would find it.

    A customer key (``CUSTOMER_KEYS``) is touched when a staged customer has it now or had it before (in
    ``customers_before``, the published silver.customers): its customers are looked up again in
    ``customers_now`` (silver.customers once the staging is published). An anonymous id is touched when a
    staged web event carries it with a customer: web events are only ever added, so its customers are those
    it had (``keys_before``: ``identity_keys`` of the published map) and those of the staged events.

    Each touched key is staged in both tables: in the map with its customer if it has one, in the conflicts
    with its customers if it has several, and null in the other (or both, a key left with no customer), so a
    MERGE removes it there (the tables' ``removed_when_null``).

    Returns the touched keys by key type.
    """
    touched = []
    if staged_customers is not None:
        before = customers_before.join(staged_customers.select("customer_id"), "customer_id", "left_semi")
        pair = ["key_type", "key_value"]
        held = staged_customers.select("customer_id", *CUSTOMER_KEYS).unionByName(
            before.select(*["customer_id", *CUSTOMER_KEYS])
        )
        keys = _customer_keys(held).select(*pair).distinct()
        holders = _customer_keys(customers_now).join(keys, pair, "left_semi")
        linked = holders.groupBy(*pair).agg(F.array_sort(F.collect_set("customer_id")).alias("customer_ids"))
        touched.append(keys.join(linked, pair, "left"))
    if staged_web_events is not None:
        new = _linked_keys(staged_web_events.where(F.col("customer_id").isNotNull()), "anonymous_id")
        had = keys_before.join(new.select("key_type", "key_value"), ["key_type", "key_value"], "left_semi")
        touched.append(
            new.unionByName(had)
            .groupBy("key_type", "key_value")
            .agg(F.array_sort(F.array_distinct(F.flatten(F.collect_list("customer_ids")))).alias("customer_ids"))
        )
    if not touched:
        return {}
    changes = touched[0]
    for frame in touched[1:]:
        changes = changes.unionByName(frame)
    with cached(changes) as keys:
        by_type = keys.groupBy("key_type").count().collect()  # before the writes: ``keys_before`` is read once
        customers = F.coalesce(F.size("customer_ids"), F.lit(0))
        write(
            keys.select("key_type", "key_value", F.when(customers == 1, F.col("customer_ids")[0]).alias("customer_id")),
            lake.IDENTITY_MAP,
        )
        several = customers > 1
        write(
            keys.select(
                "key_type",
                "key_value",
                F.when(several, F.col("customer_ids")).alias("customer_ids"),
                F.when(several, customers).alias("customers"),
            ),
            lake.IDENTITY_CONFLICTS,
        )
    return {r["key_type"]: r["count"] for r in by_type}
