"""Bad input files through ingest, clean and quality: empty drops, other delimiters, gzip under a .csv name,
Latin-1 text read as UTF-8, and a Spark error's message on the console. Each case plants a few dozen rows."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from microseg.cli import main
from microseg.runtime import tables
from microseg.runtime.errors import UndecodableTextError
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HEADER = "order_id,customer,ts,product,qty,price"
FEED = {
    "entity": "order_lines",
    "format": "csv",
    "path": "*.csv*",
    "options": {"header": "true"},
    "schema": "order_id STRING, customer STRING, ts TIMESTAMP, product STRING, qty INT, price DOUBLE",
    "keys": ["order_id", "product"],
    "columns": {
        "customer_ref": "customer",
        "order_ts": "ts",
        "product_id": "product",
        "quantity": "qty",
        "unit_price": "price",
        "currency": "'EUR'",
    },
}
MAPPINGS = {
    "feed": FEED,
    "feed_latin1": {**FEED, "encoding": "ISO-8859-1"},
    "feed_cast": {**FEED, "schema": FEED["schema"].replace("price DOUBLE", "price STRING"),
                  "columns": {**FEED["columns"], "unit_price": "CAST(price AS DOUBLE)"}},
}  # fmt: skip


def lines(customers: list[str], start: int = 0) -> list[str]:
    """One order line per customer: order o<i>, 2 x 5.00 of product p1."""
    return [f"o{start + i},{c},2025-06-01 10:00:00,p1,2,5.0" for i, c in enumerate(customers)]


def write(folder: Path, name: str, rows: list[str], encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes("\n".join([HEADER, *rows, ""]).encode(encoding))
    return path


@pytest.fixture(scope="module")
def conf(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(REPO / "conf", folder)
    for name, source in MAPPINGS.items():
        (folder / "sources" / f"{name}.yaml").write_text(yaml.safe_dump({"sources": {"feed": source}}))
    return folder


@pytest.fixture
def case(make_config, conf, tmp_path):
    """A config on a fresh lake with its own drop folder, for one of MAPPINGS."""

    def make(mapping: str = "feed"):
        drop = tmp_path / "drop"
        drop.mkdir(exist_ok=True)
        cfg = make_config(f"sources.root={drop}", f"sources.mapping={mapping}")
        return cfg.model_copy(update={"conf_dir": str(conf)}), drop

    return make


def run(spark, cfg, stages):
    return run_pipeline(spark, cfg, stages=stages, progress=lambda _: None)


def cli_args(cfg, conf: Path, drop: Path, mapping: str) -> list[str]:
    settings = [f"lake.root={cfg.lake.root}", f"sources.root={drop}", f"sources.mapping={mapping}",
                "spark.master=local[2]", "run.as_of=2025-12-31"]  # fmt: skip
    return ["--conf", str(conf / "local.yaml"), *[f"--set={s}" for s in settings]]


def ingest_log(spark, cfg) -> dict[str, int]:
    rows = tables.read(spark, cfg, "ops.ingest_log").select("path", "rows").collect()
    return {Path(r["path"].removeprefix("file:")).name: r["rows"] for r in rows}


def test_empty_files_are_recorded_with_zero_rows_alone_or_not(spark, case):
    cfg, drop = case()
    write(drop, "day1.csv", lines([f"c{i}" for i in range(10)]))
    run(spark, cfg, ["ingest"])
    (drop / "day2.csv").write_bytes(b"")  # an empty daily drop, alone in its batch
    alone = run(spark, cfg, ["ingest", "clean", "quality"]).report("ingest").entries[0]
    assert (alone.rows_written, alone.details["empty_files"]) == (0, [f"file:{drop / 'day2.csv'}"])
    (drop / "day3.csv").write_bytes(b"")
    write(drop, "day4.csv", lines([f"c{i}" for i in range(5)], start=10))
    beside = run(spark, cfg, ["ingest", "clean", "quality"]).report("ingest").entries[0]
    assert beside.rows_written == 5
    assert ingest_log(spark, cfg) == {"day1.csv": 10, "day2.csv": 0, "day3.csv": 0, "day4.csv": 5}
    assert tables.read(spark, cfg, "silver.order_items").count() == 15
    assert tables.read(spark, cfg, "silver.customers").count() == 10


def test_delimiter_and_gzip_mistakes_named_per_file_with_the_fix(spark, case, conf, capsys):
    cfg, drop = case()
    write(drop, "good.csv", lines(["a", "b", "c"]))
    (drop / "semi.csv").write_text(HEADER.replace(",", ";") + "\no9;z;2025-06-01 10:00:00;p1;1;1.0\n")
    (drop / "zipped.csv").write_bytes(gzip.compress("\n".join([HEADER, *lines(["d", "e"], start=3)]).encode()))

    assert main(["run", *cli_args(cfg, conf, drop, "feed"), "--stage", "ingest"]) == 1
    err = capsys.readouterr().err
    assert "UnreadableFileError: source feed: 2 file(s) cannot be read with the mapping" in err
    assert f"{drop / 'semi.csv'} reads as a single column" in err and 'set options: {sep: ";"}' in err
    assert f"{drop / 'zipped.csv'} holds gzip-compressed bytes" in err and "rename it zipped.csv.gz" in err
    assert not tables.exists(spark, cfg, "bronze.feed")  # nothing of the batch written

    (drop / "semi.csv").unlink()
    (drop / "zipped.csv").rename(drop / "zipped.csv.gz")
    entry = run(spark, cfg, ["ingest"]).report("ingest").entries[0]
    assert entry.rows_written == 5
    assert ingest_log(spark, cfg) == {"good.csv": 3, "zipped.csv.gz": 2}


LATIN = ["Müller", "Möller", "Mäller"]


def test_latin1_file_fails_until_its_encoding_is_set(spark, case):
    cfg, drop = case()
    others = [f"c{i}" for i in range(37)]
    write(drop, "latin.csv", lines([*LATIN, *others]), encoding="latin-1")  # 3 of 40 rows: 7.5%
    with pytest.raises(UndecodableTextError) as err:
        run(spark, cfg, ["ingest"])
    message = str(err.value)
    assert f"{drop / 'latin.csv'}: 3 of 40 rows (column(s) customer" in message
    assert "encoding: ISO-8859-1" in message and "feed.yaml" in message
    assert not tables.exists(spark, cfg, "bronze.feed")

    latin1, _ = case("feed_latin1")
    run(spark, latin1, ["ingest", "clean", "quality"])
    customers = tables.read(spark, latin1, "silver.customers")
    assert customers.count() == 40  # the three stay three
    assert sorted(r[0] for r in customers.where(F.col("crm_id").startswith("M")).select("crm_id").collect()) == sorted(
        LATIN
    )


def test_a_few_undecodable_rows_are_quarantined(spark, case):
    cfg, drop = case()
    write(drop, "day.csv", [*lines([f"c{i}" for i in range(199)]), *lines(["Müller"], start=199)], "latin-1")
    result = run(spark, cfg, ["ingest", "clean", "quality"])
    assert result.report("ingest").entries[0].rows_written == 200
    clean = result.report("clean").entries[0]
    assert (clean.rows_in, clean.rows_written, clean.rows_quarantined) == (200, 199, 1)
    quarantined = tables.read(spark, cfg, "quarantine.feed").collect()
    assert [r["rule"] for r in quarantined] == ["undecodable_text"]
    assert quarantined[0]["reason"].startswith("text in customer")
    assert tables.read(spark, cfg, "silver.order_items").count() == 199


def test_a_spark_error_is_one_short_message(spark, case, conf, capsys):
    cfg, drop = case("feed_cast")
    write(drop, "day.csv", [*lines(["a", "b"]), "o2,c,2025-06-01 10:00:00,p1,1,not-a-number"])
    assert main(["run", *cli_args(cfg, conf, drop, "feed_cast"), "--stage", "ingest", "--stage", "clean"]) == 1
    err = capsys.readouterr().err
    error = err[err.index("ERROR microseg.cli") :]
    assert "CAST_INVALID_INPUT" in error and "not-a-number" in error and "CAST(price AS DOUBLE)" in error
    assert "\tat org.apache" not in err and "Traceback" not in err
    assert len(error) < 1500

    # In a process of its own, whose JVM the command starts: the executor's failure is one line on the console,
    # its Java stack trace only in Spark's own log file, which the console names.
    command = [
        str(Path(sys.executable).with_name("microseg")),
        "run",
        *cli_args(cfg, conf, drop, "feed_cast"),
        "--stage",
        "clean",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert done.returncode == 1, done.stderr[-3000:]
    assert "CAST_INVALID_INPUT" in done.stderr and "\tat " not in done.stderr, done.stderr[-3000:]
    jvm_log = Path(re.search(r"Spark's own log, with Java stack traces: (\S+)", done.stderr).group(1))
    assert "\tat org.apache.spark" in jvm_log.read_text()
    jvm_log.unlink()
