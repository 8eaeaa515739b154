"""Source mappings and readers on tiny files."""

import pytest
from pyspark.sql import functions as F

from microseg.ingest.mapping import SourceSpec, load_mapping
from microseg.ingest.readers import read_source
from microseg.runtime.errors import ConfigError


def test_csv_reader_captures_malformed_lines(spark, make_config, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.csv").write_text("id,ts,n\nx1,2025-01-02T03:04:05,3\n#broken#,not-a-time,zz\n")
    cfg = make_config(f"sources.root={tmp_path}")
    spec = SourceSpec(
        name="t",
        entity="support_tickets",
        format="csv",
        path="t/*.csv",
        schema="id STRING, ts TIMESTAMP, n INT",
        options={"header": "true", "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss"},
    )
    rows = {r["id"]: r for r in read_source(spark, cfg, spec).cache().collect()}
    assert rows["x1"]["n"] == 3 and rows["x1"]["_corrupt_record"] is None
    assert rows["x1"]["_source_file"].endswith("/t/a.csv")
    assert rows["#broken#"]["_corrupt_record"] == "#broken#,not-a-time,zz"


def test_parquet_reader_has_empty_corrupt_column(spark, make_config, tmp_path):
    spark.createDataFrame([("o1", 2.5)], "order_id STRING, amount DOUBLE").write.parquet(str(tmp_path / "o"))
    cfg = make_config(f"sources.root={tmp_path}")
    spec = SourceSpec(name="o", entity="orders", format="parquet", path="o", schema="order_id STRING, amount DOUBLE")
    df = read_source(spark, cfg, spec)
    assert df.where(F.col("_corrupt_record").isNull()).count() == 1


def test_unknown_mapping_lists_available(make_config):
    cfg = make_config("sources.mapping=nope")
    with pytest.raises(ConfigError) as err:
        load_mapping(cfg)
    assert "nope.yaml" in str(err.value) and "synthetic" in str(err.value)


def test_synthetic_mapping_loads():
    from pathlib import Path

    from microseg.runtime.loader import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "conf" / "local.yaml")
    specs = load_mapping(cfg)
    assert specs["crm_customers"].entity == "customers" and specs["orders"].format == "parquet"


def drift_spec():
    return SourceSpec(
        name="tickets",
        entity="support_tickets",
        format="csv",
        path="t/*.csv",
        schema="id STRING, n INT",
        options={"header": "true"},
    )


def test_missing_required_column_names_source_and_column(spark, tmp_path):
    from microseg.ingest.readers import read_files
    from microseg.runtime.errors import SchemaDriftError

    (tmp_path / "a.csv").write_text("id,other\nx1,7\n")
    with pytest.raises(SchemaDriftError) as err:
        read_files(spark, drift_spec(), [str(tmp_path / "a.csv")])
    assert "tickets" in str(err.value) and "'n'" in str(err.value)


def test_extra_column_is_recorded_and_columns_stay_aligned(spark, tmp_path):
    from microseg.ingest.readers import read_files

    (tmp_path / "a.csv").write_text("id,added_by_vendor,n\nx1,surprise,7\n")
    df, extra = read_files(spark, drift_spec(), [str(tmp_path / "a.csv")])
    assert extra == ["added_by_vendor"]
    row = df.first()
    assert (row["id"], row["n"], row["_corrupt_record"]) == ("x1", 7, None)
    assert "added_by_vendor" not in df.columns


def test_bad_mapping_fails_at_start_naming_file_source_and_column(spark, make_config, tmp_path):
    import shutil
    from pathlib import Path

    from microseg.ingest.mapping import check_mapping

    conf = tmp_path / "conf"
    shutil.copytree(Path(__file__).resolve().parents[2] / "conf", conf)
    mapping = conf / "sources" / "synthetic.yaml"
    mapping.write_text(
        mapping.read_text().replace(
            "returns_when: order_type = 'return'",
            "returns_when: order_type = 'return'\n    columns:\n      amount: amout",
        )
    )
    cfg = make_config().model_copy(update={"conf_dir": str(conf)})
    with pytest.raises(ConfigError) as err:
        check_mapping(spark, cfg)
    message = str(err.value)
    assert str(mapping) in message and "source orders" in message and "amount" in message and "amout" in message
    check_mapping(spark, make_config())  # the shipped mappings are valid


@pytest.mark.parametrize("observed_files", [100, 1])  # counted in the write pass, or read back for a big batch
def test_ingest_counts_rows_per_file_and_replaces_a_changed_file(
    spark, make_config, tmp_path, monkeypatch, observed_files
):
    import datetime as dt
    from pathlib import Path

    from microseg.ingest import stage as ingest
    from microseg.runtime import tables
    from microseg.runtime.runlog import RunContext

    monkeypatch.setattr(ingest, "OBSERVED_FILES", observed_files)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.csv").write_text("id,n\nx1,1\nx2,2\nx3,3\n")
    (tmp_path / "t" / "b.csv").write_text("id,n\ny1,1\n")
    cfg = make_config(f"sources.root={tmp_path}")
    spec = SourceSpec(
        name="t",
        entity="support_tickets",
        format="csv",
        path="t/*.csv",
        schema="id STRING, n INT",
        options={"header": "true"},
    )

    def ingest_source(*args):  # what run_ingest does for one source: bronze, then ops.ingest_log
        entry, logged = ingest.ingest_source(spark, cfg, *args)
        ingest.log_files(spark, cfg, logged)
        return entry

    first = ingest_source(RunContext(as_of=dt.date(2025, 1, 1)), spec, {}, {})
    assert (first.rows_in, first.rows_written, first.details["files_new"]) == (4, 4, 2)
    logged = {Path(r["path"]).name: r["rows"] for r in tables.read(spark, cfg, "ops.ingest_log").collect()}
    assert logged == {"a.csv": 3, "b.csv": 1}

    (tmp_path / "t" / "b.csv").write_text("id,n\ny1,1\ny2,2\n")  # changed in place: now 2 rows
    seen, hashes = (found["t"] for found in ingest.ingested_files(spark, cfg))
    second = ingest_source(RunContext(as_of=dt.date(2025, 1, 2)), spec, seen, hashes)
    assert (second.details["files_new"], second.details["files_changed"], second.rows_written) == (0, 1, 2)
    bronze = sorted(r["id"] for r in tables.read(spark, cfg, "bronze.t").collect())
    assert bronze == ["x1", "x2", "x3", "y1", "y2"]
    latest = {Path(p).name: size for p, (size, _) in ingest.ingested_files(spark, cfg)[0]["t"].items()}
    assert latest == {"a.csv": 20, "b.csv": 15}  # bytes of each file's latest version

    # The same bytes delivered again under other names (twice in one drop): skipped, logged as duplicates.
    for copy in ("c.csv", "d.csv"):
        (tmp_path / "t" / copy).write_bytes((tmp_path / "t" / "a.csv").read_bytes())
    seen, hashes = (found["t"] for found in ingest.ingested_files(spark, cfg))
    third = ingest_source(RunContext(as_of=dt.date(2025, 1, 3)), spec, seen, hashes)
    assert (third.details["files_new"], third.rows_written) == (2, 0)
    assert {Path(k).name: Path(v).name for k, v in third.details["files_duplicate"].items()} == {
        "c.csv": "a.csv",
        "d.csv": "a.csv",
    }
    assert tables.read(spark, cfg, "bronze.t").count() == 5
    copies = tables.read(spark, cfg, "ops.ingest_log").where("duplicate_of IS NOT NULL").collect()
    assert sorted((Path(r["path"]).name, r["rows"], r["batch_id"]) for r in copies) == [
        ("c.csv", 0, None),
        ("d.csv", 0, None),
    ]
