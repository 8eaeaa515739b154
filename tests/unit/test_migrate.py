"""``microseg migrate``: a schema change of a gold table is an explicit step that keeps rows and history."""

import datetime as dt
import json

import pytest

from microseg.features.catalog import load_catalog
from microseg.migrate import migrate
from microseg.outputs.profiles import profile_schema
from microseg.runtime import delta_ops, lake, tables
from microseg.runtime.errors import TableSchemaError

DAY1, DAY2 = dt.date(2025, 1, 1), dt.date(2025, 1, 2)


def _profiles(spark, cfg, as_of, names):
    """Two profile rows of ``as_of`` with mean/median/z columns for the features ``names``."""
    schema = profile_schema(names)
    values = {"as_of": as_of, "layer": "value", "macro_segment": "active", "size": 5, "share": 0.5}
    rows = [
        tuple({**values, "segment_id": f"value-active-{i}"}.get(f.name, 1.0 if f.name[0] in "mz" else None)
              for f in schema.fields)
        for i in range(2)
    ]  # fmt: skip
    return spark.createDataFrame(rows, schema)


def test_migrate_adds_a_column_to_gold_segment_profiles_keeping_rows_and_history(spark, make_config):
    cfg = make_config()
    features = load_catalog(cfg).names
    older = features[:-1]  # the lake was made before the catalog's last feature existed
    for day in (DAY1, DAY2):
        tables.replace_where(_profiles(spark, cfg, day, older), cfg, lake.SEGMENT_PROFILES, f"as_of = '{day}'")
    history_before = len(delta_ops.history(spark, tables.table_path(cfg, lake.SEGMENT_PROFILES)))
    new = [f"{p}_{features[-1]}" for p in ("mean", "median", "z", "z_in_macro")]

    # Today's write has the new feature's columns: refused, naming the command that adds them.
    today = _profiles(spark, cfg, DAY2, features)
    with pytest.raises(TableSchemaError, match=rf"has no column '{new[0]}' .*microseg migrate"):
        tables.replace_where(today, cfg, lake.SEGMENT_PROFILES, f"as_of = '{DAY2}'")

    assert [e.source for e in migrate(spark, cfg, dry_run=True).entries] == [lake.SEGMENT_PROFILES.name]
    assert tables.read(spark, cfg, lake.SEGMENT_PROFILES).columns[-1] != new[-1]  # a dry run changes nothing

    report = migrate(spark, cfg)
    (entry,) = report.entries
    assert entry.details["add_columns"] == [f"{c} double" for c in new]
    assert (entry.rows_in, entry.rows_written) == (4, 4)

    profiles = tables.read(spark, cfg, lake.SEGMENT_PROFILES)
    assert profiles.columns[-len(new) :] == new and profiles.count() == 4
    assert profiles.where(f"{new[0]} IS NOT NULL").count() == 0  # old rows: the new feature unknown
    # History kept: every earlier version is still there and readable as it was.
    history = delta_ops.history(spark, tables.table_path(cfg, lake.SEGMENT_PROFILES))
    assert len(history) == history_before + 1
    path = tables.table_path(cfg, lake.SEGMENT_PROFILES)
    assert spark.read.format("delta").option("versionAsOf", 1).load(path).count() == 2
    described = {r["col_name"]: r["comment"] for r in spark.sql(f"DESCRIBE TABLE delta.`{path}`").collect()}
    assert described["share"] == lake.SEGMENT_PROFILES.comment("share")

    # Now the write goes through, and the step is on record in ops.run_log.
    tables.replace_where(today, cfg, lake.SEGMENT_PROFILES, f"as_of = '{DAY2}'")
    assert tables.read(spark, cfg, lake.SEGMENT_PROFILES).where(f"{new[0]} = 1.0").count() == 2
    (logged,) = tables.read(spark, cfg, lake.RUN_LOG).where("stage = 'migrate'").collect()
    assert logged["source"] == "gold.segment_profiles" and logged["status"] == "ok"
    assert json.loads(logged["details"])["add_columns"] == entry.details["add_columns"]
    assert not migrate(spark, cfg).entries  # nothing left to do


def test_migrate_partitions_an_old_unpartitioned_assignments_table(spark, make_config):
    cfg = make_config()
    path = tables.table_path(cfg, lake.SEGMENT_ASSIGNMENTS)
    rows = [(f"c{i}", DAY1 if i % 2 else DAY2, "value", f"s{i % 3}") for i in range(6)]
    old = spark.createDataFrame(rows, "customer_id STRING, as_of DATE, layer STRING, segment_id STRING")
    old.write.format("delta").save(path)  # as an earlier microseg wrote it: by path, no partitions, no change feed

    (entry,) = migrate(spark, cfg).entries
    assert entry.details["partition_by"] == ["as_of"] and entry.details["change_data_feed"] is True
    detail = delta_ops.detail(spark, path)
    assert detail["partitionColumns"] == ["as_of"]
    assert detail["properties"]["delta.enableChangeDataFeed"] == "true"
    assert detail["description"] == lake.SEGMENT_ASSIGNMENTS.description
    migrated = spark.table("microseg_gold.segment_assignments")
    assert sorted(migrated.select("customer_id", "as_of", "layer", "segment_id").collect()) == sorted(rows)
