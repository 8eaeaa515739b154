"""Delta writes report what they committed (operation metrics), so no stage counts rows a second time."""

from microseg.runtime import tables


def test_writes_return_the_rows_they_committed(spark, make_config):
    cfg = make_config()
    df = spark.createDataFrame([(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")], "id INT, k STRING")

    created = tables.overwrite(df, cfg, "silver.t")
    assert (created["numOutputRows"], created.rows_written) == (5, 5)

    appended = tables.append(df.where("k = 'c'"), cfg, "silver.t")
    assert (appended["numOutputRows"], appended.rows_written) == (1, 1)

    # Replace the 2 rows with k = 'b' by 3 new ones; rows of other keys in rewritten files are copied, not written.
    new_b = spark.createDataFrame([(6, "b"), (7, "b"), (8, "b")], "id INT, k STRING")
    replaced = tables.replace_where(new_b, cfg, "silver.t", "k = 'b'")
    assert replaced["numDeletedRows"] == 2
    assert replaced["numOutputRows"] - replaced.get("numCopiedRows", 0) == 3
    assert replaced.rows_written == 3
    assert tables.read(spark, cfg, "silver.t").count() == 7

    # MERGE: ids 1 and 2 are updated, 9 is inserted, the other 5 rows are untouched.
    upserts = spark.createDataFrame([(1, "x"), (2, "x"), (9, "x")], "id INT, k STRING")
    merged = tables.merge(upserts, cfg, "silver.t", keys=["id"])
    assert (merged["numSourceRows"], merged["numTargetRowsUpdated"], merged["numTargetRowsInserted"]) == (3, 2, 1)
    assert merged["numTargetRowsDeleted"] == 0
    assert merged.rows_written == 3

    first = tables.merge(upserts, cfg, "silver.new", keys=["id"])  # creates the table: a plain write
    assert (first["numOutputRows"], first.rows_written) == (3, 3)

    empty = tables.overwrite(df.where("false"), cfg, "silver.empty")
    assert empty.rows_written == 0


def test_metrics_are_read_only_when_looked_at(spark, make_config):
    from microseg.runtime import sparkops

    cfg = make_config()
    tables.overwrite(spark.createDataFrame([(1,), (2,)], "id INT"), cfg, "silver.u")
    with sparkops.job_group(spark, "unit-metrics-unread", "metrics not looked at"):
        metrics = tables.CommitMetrics(spark, tables.table_path(cfg, "silver.u"))
    assert sparkops.jobs_in_group(spark, "unit-metrics-unread") == 0
    with sparkops.job_group(spark, "unit-metrics-read", "metrics looked at"):
        assert dict(metrics)["numOutputRows"] == 2
        assert metrics.rows_written == 2
    assert sparkops.jobs_in_group(spark, "unit-metrics-read") == 1  # Delta's history, read once
