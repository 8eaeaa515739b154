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


def test_an_anonymous_event_links_through_its_id_s_logins_up_to_its_batch(spark):
    events = spark.createDataFrame(
        [
            ("a1", "C1", "b1"), ("a1", None, "b1"), ("a1", None, "b2"),  # a1: cu_1's, from b1 on
            ("a2", "C1", "b2"), ("a2", "C2", "b2"), ("a2", None, "b2"),  # two customers: none
            ("a3", None, "b1"), ("a3", "C3", "b2"), ("a3", None, "b2"),  # before the login: none
            ("a4", None, "b2"),  # the map knows a4 from a published batch
            ("a5", "C9", "b1"), ("a5", None, "b1"),  # a login of no known customer
        ],
        "anonymous_id STRING, customer_ref STRING, _batch_id STRING",
    )  # fmt: skip
    keys = spark.createDataFrame(
        [*[("crm_id", f"C{i}", [f"cu_{i}"]) for i in range(1, 5)], ("anonymous_id", "a4", ["cu_4"])],
        "key_type STRING, key_value STRING, customer_ids ARRAY<STRING>",
    )
    rebuilt = [("a1", "b1", "cu_1"), ("a1", "b2", "cu_1"), ("a3", "b2", "cu_3")]
    assert sorted(map(tuple, anonymous_links(events, keys, history=False).collect())) == rebuilt
    assert sorted(map(tuple, anonymous_links(events, keys, history=True).collect())) == [*rebuilt, ("a4", "b2", "cu_4")]


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


def test_a_daily_change_to_the_map_equals_a_rebuild(spark, make_config):
    """Keys a day's customers and web events touch, restaged and merged, give the map and conflicts a rebuild
    from everything would: a key no one holds any more leaves, a conflict left with one customer becomes a
    link, a link with a second customer becomes a conflict, a new anonymous id links."""
    from microseg.clean.identity import identity_keys, stage_identity_changes

    cfg = make_config()
    schema = "customer_id STRING, crm_id STRING, email_hash STRING, phone_hash STRING"
    day1 = [("cu_1", "C1", "e1", "p1"), ("cu_2", "C2", "e2", "p2"), ("cu_3", "C3", "e-shared", None),
            ("cu_4", "C4", "e-shared", "p4")]  # fmt: skip
    # cu_2 moves to e-shared, which cu_3 and cu_4 leave; cu_5 signs up with cu_1's phone.
    changed = [("cu_2", "C2", "e-shared", "p2"), ("cu_3", "C3", "e3", None), ("cu_4", "C4", "e4", "p4"),
               ("cu_5", "C5", "e5", "p1")]  # fmt: skip
    now = [r for r in day1 if r[0] not in {c[0] for c in changed}] + changed
    web_schema = "anonymous_id STRING, customer_id STRING"
    web1, web2 = [("a1", "cu_1"), ("a2", "cu_2"), ("a9", None)], [("a2", "cu_5"), ("a3", "cu_3"), ("a1", "cu_1")]

    tables.overwrite(spark.createDataFrame(day1, schema), cfg, "silver.customers")
    stage_identity_map(
        spark.createDataFrame(day1, schema),
        spark.createDataFrame(web1, web_schema),
        lambda df, table: tables.overwrite(df, cfg, table),
    )
    staged = {}  # as clean stages the changes, and quality then merges them
    touched = stage_identity_changes(
        spark.createDataFrame(now, schema),
        tables.read(spark, cfg, "silver.customers"),
        spark.createDataFrame(changed, schema),
        spark.createDataFrame(web2, web_schema),
        identity_keys(lambda table: tables.read(spark, cfg, table)),
        lambda df, table: staged.__setitem__(table, df.collect()),
    )
    for table, rows in staged.items():
        tables.merge(spark.createDataFrame(rows, table.ddl), cfg, table)
    assert touched == {"crm_id": 4, "email_hash": 5, "phone_hash": 3, "anonymous_id": 3}

    rebuilt = {}
    stage_identity_map(
        spark.createDataFrame(now, schema),
        spark.createDataFrame(web1 + web2, web_schema),
        lambda df, table: rebuilt.__setitem__(table.name, sorted(map(tuple, df.collect()))),
    )
    merged = {t: sorted(map(tuple, tables.read(spark, cfg, t).collect())) for t in rebuilt}
    assert merged == rebuilt
    links = dict(((t, k), c) for t, k, c in merged["silver.identity_map"])
    assert links[("email_hash", "e-shared")] == "cu_2" and ("email_hash", "e2") not in links
    assert ("phone_hash", "p1") not in links and ("anonymous_id", "a2") not in links
    conflicts = {(t, k): ids for t, k, ids, _ in merged["ops.identity_conflicts"]}
    assert conflicts == {("phone_hash", "p1"): ["cu_1", "cu_5"], ("anonymous_id", "a2"): ["cu_2", "cu_5"]}


def test_a_map_published_without_its_customers_is_rebuilt_from_the_staged_customers(spark, make_config):
    """A run killed while quality publishes can leave the identity map and conflicts published and silver.customers
    not yet created; the restarted clean then stages the whole map from the customers it stages again, rather
    than merging changes against customers that were never published."""
    from microseg.clean import staging
    from microseg.clean.identity_staging import stage_identity
    from microseg.clean.staging import INCREMENTAL, REBUILD, Manifest, Plan
    from microseg.runtime import lake

    cfg = make_config()
    schema = "customer_id STRING, crm_id STRING, email_hash STRING, phone_hash STRING"
    customers = spark.createDataFrame([("cu_1", "C1", "e1", "p1"), ("cu_2", "C2", "e1", None)], schema)
    stage_identity_map(customers, None, lambda df, table: tables.overwrite(df, cfg, table))  # published
    assert not tables.exists(spark, cfg, lake.CUSTOMERS)
    manifest = Manifest("r2", plans={"crm": Plan("crm", ["b1"], INCREMENTAL)})
    staging.stage(customers, cfg, lake.CUSTOMERS, manifest, "crm")

    counts = stage_identity(spark, cfg, manifest, anonymous_ids=False)
    assert counts["mode"] == REBUILD and manifest.plans[staging.IDENTITY].mode == REBUILD
    links = staging.staged(spark, cfg, lake.IDENTITY_MAP).select("key_type", "key_value", "customer_id")
    expected = [("crm_id", "C1", "cu_1"), ("crm_id", "C2", "cu_2"), ("phone_hash", "p1", "cu_1")]
    assert sorted(map(tuple, links.collect())) == expected
    conflicts = staging.staged(spark, cfg, lake.IDENTITY_CONFLICTS).select("key_type", "key_value", "customer_ids")
    assert [tuple(r) for r in conflicts.collect()] == [("email_hash", "e1", ["cu_1", "cu_2"])]
