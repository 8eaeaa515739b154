"""Files Spark would read silently as garbage, the source's encoding, and text that did not decode."""

import gzip

import pytest
from pyspark.sql import functions as F

from microseg.ingest.mapping import SourceSpec
from microseg.ingest.readers import unreadable
from microseg.ingest.stage import check_decoding
from microseg.quality.rules import flag_rules, undecodable
from microseg.runtime.errors import UndecodableTextError

SCHEMA = "order_id STRING, customer STRING, amount DOUBLE"


def spec(**extra) -> SourceSpec:
    fields = {"entity": "orders", "format": "csv", "schema": SCHEMA, "options": {"header": "true"}, **extra}
    return SourceSpec.model_validate(fields).model_copy(update={"name": "feed"})


@pytest.mark.parametrize(
    ("path", "head", "expected"),
    [
        ("file:/d/a.csv", b"order_id,customer,amount\n1,x,2.0\n", None),
        ("file:/d/a.csv", b"order_id;customer;amount\n1;x;2.0\n", 'options: {sep: ";"}'),
        ("file:/d/a.csv", b"order_id\tcustomer\tamount\n", 'options: {sep: "\\t"}'),
        ("file:/d/a.csv", b"order_id|customer|amount\n", 'options: {sep: "|"}'),
        ("file:/d/a.csv", gzip.compress(b"order_id,customer,amount\n"), "rename it a.csv.gz"),
        ("file:/d/a.csv.gz", gzip.compress(b"order_id,customer,amount\n"), None),
        ("file:/d/a.csv.gz", gzip.compress(b"order_id;customer;amount\n"), 'options: {sep: ";"}'),
        ("file:/d/a.csv", b"PK\x03\x04rest", "extract its files"),
        ("file:/d/a.csv.gz", b"\x1f\x8b\x07damaged", "gzip data is damaged"),
    ],
)
def test_unreadable_files_named_with_the_fix(spark, path, head, expected):
    found = unreadable(spec(), path, head)
    if expected is None:
        assert found is None
    else:
        assert found.startswith(path) and expected in found


def test_semicolon_header_is_fine_when_sep_is_set(spark):
    semicolons = spec(options={"header": "true", "sep": ";"})
    assert unreadable(semicolons, "file:/a.csv", b"order_id;customer;amount\n") is None


def test_encoding_defaults_to_utf8_and_takes_the_option():
    assert spec().encoding == "UTF-8"
    assert spec(encoding="ISO-8859-1").encoding == "ISO-8859-1"
    assert spec(options={"header": "true", "encoding": "windows-1252"}).encoding == "windows-1252"
    assert spec(encoding="latin1", options={"charset": "latin1"}).encoding == "latin1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"encoding": "UTF-8", "options": {"encoding": "ISO-8859-1"}}, "disagree; keep encoding: only"),
        ({"encoding": "latin-9000"}, "unknown encoding 'latin-9000'"),
    ],
)
def test_encoding_conflicts_and_unknown_names_are_rejected(extra, message):
    with pytest.raises(ValueError, match=message):
        spec(**extra)


def test_undecodable_rule_names_the_columns(spark):
    df = spark.createDataFrame(
        [("1", "M\ufffdller", "ok", None), ("2", "Meyer", "ok", None), ("3", "M\ufffdller", "Caf\ufffd", None)],
        "order_id string, customer string, note string, _corrupt_record string",
    )
    flagged = flag_rules(df, [undecodable(df)]).orderBy("order_id").select("_rule", "_reason").collect()
    assert [r["_rule"] for r in flagged] == ["undecodable_text", None, "undecodable_text"]
    assert flagged[0]["_reason"].startswith("text in customer did not decode")
    assert flagged[2]["_reason"].startswith("text in customer, note did not decode")


def rows_of(spark, files: dict[str, tuple[int, int]]):
    """Rows per file: (good, undecodable)."""
    data = [
        (f"{path}-{i}", "M\ufffdller" if i < bad else "Meyer", path)
        for path, (good, bad) in files.items()
        for i in range(good + bad)
    ]
    return spark.createDataFrame(data, "order_id string, customer string, _source_file string").withColumn(
        "_corrupt_record", F.lit(None).cast("string")
    )


def test_more_than_one_percent_of_a_file_fails_the_batch(spark, make_config):
    cfg = make_config()
    # a.csv: 2 of 100 rows (2%); b.csv: 1 of 200 rows (0.5%), below the limit.
    raw = rows_of(spark, {"file:/d/a.csv": (98, 2), "file:/d/b.csv": (199, 1)})
    with pytest.raises(UndecodableTextError) as err:
        check_decoding(raw, spec(), cfg)
    message = str(err.value)
    assert "file:/d/a.csv: 2 of 100 rows (column(s) customer" in message
    assert "b.csv" not in message
    assert "encoding: ISO-8859-1" in message
    check_decoding(rows_of(spark, {"file:/d/b.csv": (199, 1), "file:/d/c.csv": (100, 1)}), spec(), cfg)


def test_a_spark_error_is_summarised_without_its_stack_trace(spark):
    from microseg.runtime.logs import spark_error

    with pytest.raises(Exception) as err:
        spark.createDataFrame([("x",)], "v string").selectExpr("CAST(v AS INT) AS n").collect()
    summary = spark_error(err.value)
    assert "CAST_INVALID_INPUT" in summary and "'x'" in summary
    assert "\tat " not in summary and len(summary) < 3000
    assert spark_error(ValueError("not from Spark")) is None
