"""Delta writes report what they committed (operation metrics), so no stage counts rows a second time;
every write is one its table's registry entry allows."""

import datetime as dt
import json
from pathlib import Path

import pytest

from microseg.runtime import lake, table_docs, tables
from microseg.runtime.lake import APPEND, MERGE, OVERWRITE, REPLACE, Table

ANY_WRITE = Table(
    "silver.t", "a test table", (("id", "int"), ("k", "string")), (OVERWRITE, APPEND, REPLACE, MERGE), ("id",)
)


def test_writes_return_the_rows_they_committed(spark, make_config):
    cfg = make_config()
    df = spark.createDataFrame([(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")], "id INT, k STRING")

    created = tables.overwrite(df, cfg, ANY_WRITE)
    assert (created["numOutputRows"], created.rows_written) == (5, 5)

    appended = tables.append(df.where("k = 'c'"), cfg, ANY_WRITE)
    assert (appended["numOutputRows"], appended.rows_written) == (1, 1)

    # Replace the 2 rows with k = 'b' by 3 new ones; rows of other keys in rewritten files are copied, not written.
    new_b = spark.createDataFrame([(6, "b"), (7, "b"), (8, "b")], "id INT, k STRING")
    replaced = tables.replace_where(new_b, cfg, ANY_WRITE, "k = 'b'")
    assert replaced["numDeletedRows"] == 2
    assert replaced["numOutputRows"] - replaced.get("numCopiedRows", 0) == 3
    assert replaced.rows_written == 3
    assert tables.read(spark, cfg, ANY_WRITE).count() == 7

    # MERGE: ids 1 and 2 are updated, 9 is inserted, the other 5 rows are untouched.
    upserts = spark.createDataFrame([(1, "x"), (2, "x"), (9, "x")], "id INT, k STRING")
    merged = tables.merge(upserts, cfg, ANY_WRITE)  # on the declared key, id
    assert (merged["numSourceRows"], merged["numTargetRowsUpdated"], merged["numTargetRowsInserted"]) == (3, 2, 1)
    assert merged["numTargetRowsDeleted"] == 0
    assert merged.rows_written == 3

    first = tables.merge(upserts, cfg, Table("silver.new", "", ANY_WRITE.columns, (MERGE,), ("id",)))
    assert first.rows_written == 3  # the write that created the table

    empty = tables.overwrite(df.where("false"), cfg, Table("silver.empty", "", ANY_WRITE.columns, (OVERWRITE,)))
    assert empty.rows_written == 0


def test_metrics_are_read_only_when_looked_at(spark, make_config):
    from microseg.runtime import sparkops

    cfg = make_config()
    table = Table("silver.u", "", (("id", "int"),), (OVERWRITE,))
    tables.overwrite(spark.createDataFrame([(1,), (2,)], "id INT"), cfg, table)
    with sparkops.job_group(spark, "unit-metrics-unread", "metrics not looked at"):
        metrics = tables.CommitMetrics(spark, tables.table_path(cfg, table), at=0)  # the write that created it
    assert sparkops.jobs_in_group(spark, "unit-metrics-unread") == 0
    with sparkops.job_group(spark, "unit-metrics-read", "metrics looked at"):
        assert dict(metrics)["numOutputRows"] == 2
        assert metrics.rows_written == 2
    assert sparkops.jobs_in_group(spark, "unit-metrics-read") == 1  # Delta's history, read once


def test_the_delta_table_check_costs_no_spark_job(spark, make_config, tmp_path):
    """delta_ops asks Delta's catalog (the same SQL under Spark Connect), as DeltaTable.isDeltaTable did: no job."""
    from microseg.runtime import delta_ops, sparkops

    cfg = make_config()
    table = Table("silver.v", "", (("id", "int"),), (OVERWRITE,))
    tables.overwrite(spark.createDataFrame([(1,)], "id INT"), cfg, table)
    (tmp_path / "plain").mkdir()
    with sparkops.job_group(spark, "unit-is-delta", "is it a Delta table"):
        assert delta_ops.is_delta_table(spark, tables.table_path(cfg, table))
        assert not delta_ops.is_delta_table(spark, str(tmp_path / "plain"))
        assert not delta_ops.is_delta_table(spark, str(tmp_path / "missing"))
    assert sparkops.jobs_in_group(spark, "unit-is-delta") == 0


def test_a_write_the_entry_does_not_declare_is_refused(spark, make_config):
    cfg = make_config()
    df = spark.createDataFrame([(1, "a")], "id INT, k STRING")
    with pytest.raises(ValueError, match=r"ops.run_log allows append writes \(runtime/lake.py\), not overwrite"):
        tables.overwrite(df, cfg, lake.RUN_LOG)
    with pytest.raises(ValueError, match="not merge"):
        tables.merge(df, cfg, "gold.customer_features")  # a name resolves to its entry
    assert not tables.exists(spark, cfg, lake.RUN_LOG)
    with pytest.raises(KeyError, match=r"no table 'gold\.segments' in the registry"):
        tables.read(spark, cfg, "gold.segments")


def test_registry_entries_are_complete():
    names = [t.name for t in lake.TABLES]
    assert len(names) == len(set(names))
    for table in lake.TABLES:
        assert table.layer in ("silver", "gold", "ops") and table.description and table.columns and table.writes
        assert set(table.writes) <= set(lake.WRITES)
        declared = {name for name, _ in table.columns}
        assert set(table.keys) <= declared and set(table.partition_by) <= declared, table.name
    assert lake.named("bronze.orders").columns == lake.BRONZE_METADATA
    assert lake.SEGMENT_ASSIGNMENTS.change_data_feed and lake.SEGMENT_ASSIGNMENTS.keys == (
        "customer_id",
        "as_of",
        "layer",
    )


def test_docs_tables_md_is_generated_from_the_registry():
    docs = Path(__file__).resolve().parents[2] / "docs" / "TABLES.md"
    assert docs.read_text() == table_docs.markdown(), (
        "docs/TABLES.md is stale: run microseg tables --out docs/TABLES.md"
    )


def test_a_snapshot_merge_reads_only_its_partition_and_a_rerun_changes_nothing(spark, make_config):
    import datetime as dt

    cfg = make_config()
    table = Table(
        "gold.t_snapshots",
        "a test snapshot table",
        (("id", "int"), ("as_of", "date"), ("v", "string")),
        (MERGE,),
        keys=("id", "as_of"),
        partition_by=("as_of",),
        change_data_feed=True,
    )
    day1, day2 = dt.date(2025, 1, 1), dt.date(2025, 1, 2)
    rows = spark.createDataFrame([(i, day1, "a") for i in range(4)], "id INT, as_of DATE, v STRING")
    tables.merge(rows, cfg, table, within={"as_of": day1})
    snapshot2 = spark.createDataFrame([(i, day2, "a" if i else "b") for i in range(4)], "id INT, as_of DATE, v STRING")
    first = tables.merge(snapshot2, cfg, table, within={"as_of": day2})
    assert (first["numTargetRowsInserted"], first["numTargetRowsUpdated"]) == (4, 0)
    # The day's MERGE looked at the day's files only: none of day 1's.
    version = tables.version(spark, cfg, table)
    # Day 1's files gone from disk: a MERGE that read them would fail. Day 2's MERGEs read day 2 only.
    day1_files = list(Path(tables.table_path(cfg, table), f"as_of={day1}").glob("*.parquet"))
    assert day1_files
    for f in day1_files:
        f.unlink()

    rerun = tables.merge(snapshot2, cfg, table, within={"as_of": day2})
    assert not rerun.committed and rerun.rows_written == 0  # nothing new: no commit, no file rewritten
    assert tables.version(spark, cfg, table) == version
    # No new version, so nothing in the change data feed for its readers.
    changes = spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", version + 1)

    changed = spark.createDataFrame([(0, day2, "c")], "id INT, as_of DATE, v STRING")
    update = tables.merge(changed, cfg, table, within={"as_of": day2})
    assert (update["numTargetRowsInserted"], update["numTargetRowsUpdated"]) == (0, 1)
    # The files the MERGE touched, from its commit in the Delta log: day 2's only.
    assert update["numTargetFilesRemoved"] >= 1
    commit = Path(tables.table_path(cfg, table), "_delta_log", f"{version + 1:020d}.json").read_text()
    touched = [a[kind]["path"] for a in map(json.loads, commit.splitlines()) for kind in ("add", "remove") if kind in a]
    assert touched and all(p.startswith(f"as_of={day2}/") for p in touched), touched
    feed = changes.load(tables.table_path(cfg, table)).collect()
    assert sorted((r["_change_type"], r["id"], r["v"]) for r in feed) == [
        ("update_postimage", 0, "c"),
        ("update_preimage", 0, "b"),
    ]


def test_sql_names_follow_the_catalog_and_schema_prefix(make_config):
    assert lake.SEGMENT_ASSIGNMENTS.sql_name() == "microseg_gold.segment_assignments"
    cfg = make_config("tables.catalog=main", "tables.schema_prefix=acme_seg")
    named = lake.named("quarantine.orders").sql_name(cfg.tables.catalog, cfg.tables.schema_prefix)
    assert named == "main.acme_seg_quarantine.orders"


def test_a_write_with_an_undeclared_column_or_type_is_refused(spark, make_config):
    from microseg.runtime.errors import TableSchemaError

    cfg = make_config()
    extra = spark.createDataFrame([("k1", "c1", "x")], "key_type STRING, key_value STRING, surprise STRING")
    with pytest.raises(TableSchemaError, match=r"silver.identity_map: unexpected column 'surprise' \(string\)"):
        tables.overwrite(extra, cfg, lake.IDENTITY_MAP)
    retyped = spark.createDataFrame([("k1", "c1", 7)], "key_type STRING, key_value STRING, customer_id INT")
    with pytest.raises(TableSchemaError, match="column 'customer_id' is int, declared string"):
        tables.overwrite(retyped, cfg, lake.IDENTITY_MAP)
    assert not tables.exists(spark, cfg, lake.IDENTITY_MAP)
    # A frame may leave declared columns out; a table with run-time columns takes more of them.
    tables.overwrite(extra.drop("surprise", "key_value"), cfg, lake.IDENTITY_MAP)
    tables.replace_where(
        spark.createDataFrame(
            [("c1", dt.date(2025, 1, 1), 3.0)], "customer_id STRING, as_of DATE, recency_days DOUBLE"
        ),
        cfg,
        lake.CUSTOMER_FEATURES,
        "as_of = '2025-01-01'",
    )


def test_tables_are_named_in_the_metastore_with_their_comments(spark, make_config):
    cfg = make_config()
    moves = spark.createDataFrame(
        [(dt.date(2025, 1, 2), dt.date(2025, 1, 1), "new", "active", 3, 0.75)],
        "as_of DATE, previous_as_of DATE, from_segment STRING, to_segment STRING, customers BIGINT, share DOUBLE",
    )
    tables.replace_where(moves, cfg, lake.LIFECYCLE_TRANSITIONS, "as_of = '2025-01-02'")
    name = "microseg_gold.lifecycle_transitions"
    assert spark.table(name).select("to_segment", "customers").collect() == [("active", 3)]

    described = {r["col_name"]: r for r in spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()}
    assert described["customers"]["comment"] == lake.COMMENTS["customers"] == "Number of customers"
    assert described["Comment"]["data_type"] == lake.LIFECYCLE_TRANSITIONS.description
    assert described["Type"]["data_type"] == "EXTERNAL"  # dropping the name would leave the lake's files
    assert described["Location"]["data_type"].endswith(tables.table_path(cfg, lake.LIFECYCLE_TRANSITIONS))

    # Another lake writing the same table takes the name over; the first lake's table is still there by path.
    other = make_config()
    tables.replace_where(moves.withColumn("customers", moves.customers * 2), other, lake.LIFECYCLE_TRANSITIONS, "true")
    assert spark.table(name).select("customers").collect() == [(6,)]
    assert tables.read(spark, cfg, lake.LIFECYCLE_TRANSITIONS).select("customers").collect() == [(3,)]


def test_a_column_the_table_lacks_fails_until_migrated(spark, make_config):
    from microseg.runtime.errors import TableSchemaError

    cfg = make_config()
    narrow = Table("gold.t_narrow", "", (("id", "int"),), (APPEND,))
    tables.append(spark.createDataFrame([(1,)], "id INT"), cfg, narrow)
    wider = Table("gold.t_narrow", "", (("id", "int"), ("extra", "string")), (APPEND,))
    with pytest.raises(TableSchemaError, match=r"gold.t_narrow: the table has no column 'extra' .*microseg migrate"):
        tables.append(spark.createDataFrame([(2, "x")], "id INT, extra STRING"), cfg, wider)
    assert tables.read(spark, cfg, narrow).count() == 1


def test_a_catalog_gives_three_level_names(spark, make_config):
    cfg = make_config("tables.catalog=spark_catalog", "tables.schema_prefix=acme_seg")
    tables.overwrite(
        spark.createDataFrame([("email_hash", "h1", "cu_1")], lake.IDENTITY_MAP.ddl), cfg, lake.IDENTITY_MAP
    )
    assert spark.table("spark_catalog.acme_seg_silver.identity_map").collect() == [("email_hash", "h1", "cu_1")]
    assert "acme_seg_silver" in {d.name for d in spark.catalog.listDatabases()}
