"""Identity resolution: deterministic links, and ambiguous keys reported instead of guessed."""

from pyspark.sql import functions as F

from microseg.clean.identity import anonymous_links, stage_identity_map
from microseg.runtime import tables


def write_identity_map(spark, cfg) -> dict:
    """The map of silver.customers, written straight to silver (clean stages it; quality publishes it)."""
    customers = tables.read(spark, cfg, "silver.customers")
    return stage_identity_map(customers, None, lambda df, table: tables.overwrite(df, cfg, table))


def test_shared_email_is_a_conflict_not_a_link(spark, make_config):
    cfg = make_config()
    customers = spark.createDataFrame(
        [("cu_1", "C1", "e-shared", "p1"), ("cu_2", "C2", "e-shared", "p2"), ("cu_3", "C3", "e3", None)],
        "customer_id STRING, crm_id STRING, email_hash STRING, phone_hash STRING",
    )
    tables.overwrite(customers, cfg, "silver.customers")
    counts = write_identity_map(spark, cfg)
    assert counts["conflicts"] == {"email_hash": 1}
    assert counts["linked_keys"] == {"crm_id": 3, "email_hash": 1, "phone_hash": 2}
    conflict = tables.read(spark, cfg, "ops.identity_conflicts").first()
    assert (conflict["key_value"], conflict["customer_ids"]) == ("e-shared", ["cu_1", "cu_2"])
    links = {
        (r["key_type"], r["key_value"]): r["customer_id"]
        for r in tables.read(spark, cfg, "silver.identity_map").collect()
    }
    assert links[("email_hash", "e3")] == "cu_3" and ("email_hash", "e-shared") not in links


def test_anonymous_id_links_only_to_one_customer(spark):
    events = spark.createDataFrame(
        [("a1", "C1"), ("a1", None), ("a1", "C1"), ("a2", "C1"), ("a2", "C2"), ("a3", None)],
        "anonymous_id STRING, customer_ref STRING",
    )
    assert sorted(map(tuple, anonymous_links(events).collect())) == [("a1", "C1")]


def test_cleaners_link_through_the_identity_map(spark, make_config):
    """A later source's records find their customer through silver.identity_map, and a shared email
    (a conflict) is ambiguous, not linked to either customer."""
    from microseg.clean.events import clean_email_events
    from microseg.clean.identity import crm_links, identity_keys

    cfg = make_config()
    customers = spark.createDataFrame(
        [("cu_1", "C1", "e-shared", "p1"), ("cu_2", "C2", "e-shared", "p2"), ("cu_3", "C3", "e3", None)],
        "customer_id STRING, crm_id STRING, email_hash STRING, phone_hash STRING",
    )
    tables.overwrite(customers, cfg, "silver.customers")
    write_identity_map(spark, cfg)
    keys = identity_keys(lambda table: tables.read(spark, cfg, table))
    assert sorted(map(tuple, crm_links(keys).collect())) == [("C1", "cu_1"), ("C2", "cu_2"), ("C3", "cu_3")]
    events = spark.createDataFrame(
        [("m1", "e3", "open", None), ("m2", "e-shared", "open", None), ("m3", "e9", "open", None)],
        "event_id STRING, email_hash STRING, event_type STRING, _corrupt_record STRING",
    ).withColumn("event_ts", F.current_timestamp())
    flagged = {r["event_id"]: (r["customer_id"], r["_rule"]) for r in clean_email_events(events, keys).collect()}
    assert flagged["m1"] == ("cu_3", None)
    assert flagged["m2"][1] == "ambiguous_identity"
    assert flagged["m3"] == (None, "orphan_reference")
