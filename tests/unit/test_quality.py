"""The Great Expectations adapter on a tiny table with known failures."""

import pytest

from microseg.config import QualityRule
from microseg.quality import TableRules, validate


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
    results = {r.rule.name: r for r in validate({"silver.t": df}, [suite])}
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
    validate({"silver.t": df}, [suite], docs_dir=str(tmp_path / "docs"))
    index = tmp_path / "docs" / "index.html"
    assert index.exists()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 1 and "silver.t" in index.read_text()
    assert "Unsuccessful" in pages[0].read_text()  # the one rule failed (one null id)
