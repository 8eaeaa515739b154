"""The Great Expectations adapter on a tiny table with known failures."""

import pytest

from microseg.quality.gx import TableRules, validate
from microseg.runtime.config import QualityRule


def test_rule_results_count_unexpected_rows(spark):
    df = spark.createDataFrame(
        [("a", 1, "web"), ("b", 5, "app"), ("b", 12, "fax"), (None, 3, "web")], "id STRING, score INT, channel STRING"
    )
    suite = TableRules(
        table="silver.t",
        rules=[
            QualityRule(name="id_present", expectation="not_null", column="id", severity="critical"),
            QualityRule(name="id_unique", expectation="unique", column="id"),
            QualityRule(name="score_range", expectation="between", column="score", min=0, max=10),
            QualityRule(name="channel_known", expectation="in_set", column="channel", values=["web", "app"]),
            QualityRule(
                name="channel_mostly", expectation="in_set", column="channel", values=["web", "app"], mostly=0.7
            ),
        ],
    )
    results = {r.rule.name: r for r in validate([("silver.t", suite, df)])}
    assert (results["id_present"].success, results["id_present"].unexpected_count) == (False, 1)
    assert (results["id_unique"].success, results["id_unique"].unexpected_count) == (False, 2)
    assert (results["score_range"].success, results["score_range"].unexpected_count) == (False, 1)
    assert (results["channel_known"].success, results["channel_known"].unexpected_count) == (False, 1)
    assert results["channel_mostly"].success is True
    assert results["id_present"].evaluated == 4
    assert results["score_range"].unexpected_percent == pytest.approx(25.0)


def test_data_docs_are_built(spark, tmp_path):
    df = spark.createDataFrame([("a",), (None,)], "id STRING")
    suite = TableRules(table="silver.t", rules=[QualityRule(name="id_present", expectation="not_null", column="id")])
    other = TableRules(table="silver.u", rules=[QualityRule(name="id_present", expectation="not_null", column="id")])
    checks = [("silver.t", suite, df), ("silver.u", other, df.dropna())]
    results = validate(checks, docs_dir=str(tmp_path / "docs"), workers=2)  # the two checks side by side
    outcomes = [(r.table, r.success, r.unexpected_count) for r in results]
    assert outcomes == [("silver.t", False, 1), ("silver.u", True, 0)]  # in the order of the checks
    index = tmp_path / "docs" / "index.html"
    assert index.exists()
    pages = {p.name: p.read_text() for p in (tmp_path / "docs" / "validations").rglob("*.html")}
    assert sorted(pages) == ["silver.t-rows.html", "silver.u-rows.html"]  # one build, every check's page
    assert "silver.t" in index.read_text() and "silver.u" in index.read_text()
    assert "Unsuccessful" in pages["silver.t-rows.html"]  # its one rule failed (one null id)


def test_publication_moves_quarantined_rows_and_replaces_its_batches_on_a_rerun(spark, make_config):
    import json

    from pyspark.sql import functions as F

    from microseg.clean import staging
    from microseg.clean.staging import INCREMENTAL, Manifest, Plan
    from microseg.quality.publish import publish
    from microseg.quality.stage import gate
    from microseg.runtime import lake, tables

    cfg = make_config()
    published = spark.createDataFrame(
        [("o0", 9.0, False, "b-0")], "order_id STRING, amount DOUBLE, is_return BOOLEAN, _batch_id STRING"
    )
    tables.overwrite(published, cfg, lake.ORDERS)
    batch = spark.createDataFrame(
        [("o1", 5.0, False), ("o2", 500.0, False), ("o3", -7.0, True), ("o3", 1.0, False)],
        "order_id STRING, amount DOUBLE, is_return BOOLEAN",
    ).withColumn("_batch_id", F.lit("b-1"))
    rules = [
        QualityRule(name="unique_id", expectation="unique", column="order_id", severity="quarantine"),
        QualityRule(name="plausible", expectation="between", column="amount", min=0, max=100,
                    severity="quarantine", where="is_return = false", reason="too large"),
    ]  # fmt: skip

    def stage_and_publish() -> list:
        manifest = Manifest("r1", {"src": Plan("src", ["b-1"], INCREMENTAL)})
        staging.stage(batch, cfg, lake.ORDERS, manifest, "src")
        return publish(spark, cfg, manifest, [gate(lake.ORDERS, staging.staged(spark, cfg, lake.ORDERS), rules)], "r1")

    entry = stage_and_publish()[0]
    assert (entry.rows_in, entry.rows_written, entry.rows_quarantined) == (4, 1, 3)
    assert entry.details["quarantined_by_rule"] == {"plausible": 1, "unique_id": 2}
    assert sorted(r["order_id"] for r in tables.read(spark, cfg, lake.ORDERS).collect()) == ["o0", "o1"]
    moved = {
        (r["rule"], json.loads(r["record"])["amount"], r["reason"], r["_batch_id"])
        for r in tables.read(spark, cfg, "quarantine.orders").collect()
    }
    assert moved == {
        ("unique_id", -7.0, "unique on order_id", "b-1"),
        ("unique_id", 1.0, "unique on order_id", "b-1"),
        ("plausible", 500.0, "too large", "b-1"),
    }
    assert staging.read_manifest(cfg) is None  # the staging is gone once published

    stage_and_publish()  # the same batch again (a rerun after an interruption): its rows replaced, not added
    assert sorted(r["order_id"] for r in tables.read(spark, cfg, lake.ORDERS).collect()) == ["o0", "o1"]
    assert tables.read(spark, cfg, "quarantine.orders").count() == 3


def test_a_batch_s_unique_rules_see_the_rows_that_share_a_value_with_it(spark):
    from microseg.quality.stage import sharing_a_value

    schema = "customer_id STRING, crm_id STRING"
    table = spark.createDataFrame(
        [("c1", "K1"), ("c2", "K2"), ("c3", "K3"), ("c4", None), ("c5", "K5"), ("c6", "K6")], schema
    )  # c5 and c6 are the staged rows, also in the table as it will be
    staged = spark.createDataFrame([("c5", "K5"), ("c6", "K6"), ("c1", "K2")], schema)  # c1 and K2 again
    met = sharing_a_value(table.unionByName(staged.where("crm_id = 'K2'")), staged, ["customer_id", "crm_id"])
    # c1 shares its customer_id and the last row both columns: each row comes once, so only the real repeats
    # (c1 twice, K2 twice) remain for the unique rules to find.
    assert sorted(map(tuple, met.collect())) == [("c1", "K1"), ("c1", "K2"), ("c2", "K2"), ("c5", "K5"), ("c6", "K6")]


def test_fresh_batches_are_appended_and_a_resumed_publication_replaces_them(spark, make_config):
    from microseg.clean import staging
    from microseg.clean.staging import INCREMENTAL, Manifest, Plan
    from microseg.quality.publish import publish
    from microseg.quality.stage import gate
    from microseg.runtime import delta_ops, lake, tables

    cfg = make_config()
    schema = "order_id STRING, amount DOUBLE, is_return BOOLEAN, _batch_id STRING"
    tables.overwrite(spark.createDataFrame([("o0", 9.0, False, "b-0")], schema), cfg, lake.ORDERS)
    quarantine = lake.quarantine("orders")
    tables.overwrite(spark.createDataFrame([], quarantine.ddl), cfg, quarantine)
    batch = spark.createDataFrame([("o1", 5.0, False, "b-1"), ("o2", -1.0, False, "b-1")], schema)
    rule = QualityRule(name="positive", expectation="between", column="amount", min=0, severity="quarantine")

    def stage_and_publish() -> None:
        manifest = Manifest("r1", {"src": Plan("src", ["b-1"], INCREMENTAL, fresh=True)})
        staging.stage(batch, cfg, lake.ORDERS, manifest, "src")
        publish(spark, cfg, manifest, [gate(lake.ORDERS, staging.staged(spark, cfg, lake.ORDERS), [rule])], "r1")

    def last_write(table: str) -> str:
        return delta_ops.history(spark, tables.table_path(cfg, table), 1)[0]["operationParameters"]["mode"]

    stage_and_publish()  # a batch never staged before: appended to the table and to its quarantine
    assert (last_write(lake.ORDERS), last_write("quarantine.orders")) == ("Append", "Append")
    assert sorted(r["order_id"] for r in tables.read(spark, cfg, lake.ORDERS).collect()) == ["o0", "o1"]

    # The same staging published again after an interruption (the quality stage rerun alone): the earlier
    # publication's mark makes it replace the batch's rows, as they may be in the tables already.
    manifest = Manifest("r1", {"src": Plan("src", ["b-1"], INCREMENTAL, fresh=True)})
    staging.stage(batch, cfg, lake.ORDERS, manifest, "src")
    assert staging.begin_publication(cfg) is False
    publish(spark, cfg, manifest, [gate(lake.ORDERS, staging.staged(spark, cfg, lake.ORDERS), [rule])], "r1")
    assert (last_write(lake.ORDERS), last_write("quarantine.orders")) == ("Overwrite", "Overwrite")
    assert sorted(r["order_id"] for r in tables.read(spark, cfg, lake.ORDERS).collect()) == ["o0", "o1"]
    assert tables.read(spark, cfg, "quarantine.orders").count() == 1
