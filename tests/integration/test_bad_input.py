"""The torture suite: bad input through ingest, clean and quality, each case a small generated feed, asserting
revenue, customer counts, quarantine reasons and messages, not only exit codes.

Rows: empty, unparseable and 1897 dates, empty amounts, "C" order ids without returns_when, lines and a whole file
delivered twice, a batch over its rejected share, a bad file retracted and a published batch taken back. Files:
empty drops, other delimiters, gzip under a .csv name, Latin-1 text read as UTF-8, and a Spark error's message on
the console."""

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
from microseg.runtime.errors import DataQualityError, UndecodableTextError
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

# -- rows: a small orders feed (an order_lines mapping of its own) ---------------------------------------------------

CONF = Path(__file__).resolve().parents[2] / "conf"
MAPPING = """
sources:
  shop:
    keys: [InvoiceNo, StockCode]
    event_time: InvoiceDate
    entity: order_lines
    format: csv
    path: "*.csv"
    options: {header: "true"}
    schema: InvoiceNo STRING, StockCode STRING, Quantity INT, UnitPrice DOUBLE, InvoiceDate STRING, CustomerID STRING
    columns:
      order_id: InvoiceNo
      customer_ref: CustomerID
      order_ts: try_to_timestamp(InvoiceDate, 'yyyy-MM-dd HH:mm')
      product_id: StockCode
      quantity: Quantity
      unit_price: UnitPrice
      currency: "'EUR'"
"""
HEADER = "InvoiceNo,StockCode,Quantity,UnitPrice,InvoiceDate,CustomerID"
# (invoice, product, quantity, unit price, customer): 36 good lines in 12 invoices of 4 customers. The ids of
# some invoices start with "C", and the mapping declares no returns: they are sales like the others.
GOOD = [
    (f"{prefix}{100 + i}", f"P{j}", i % 3 + 1, 2.5 * (j + 1), f"K{i % 4}")
    for i, prefix in enumerate(["", "C", ""] * 4)
    for j in range(3)
]
# Bad lines, each with the rule and the reason it must be quarantined with.
BAD = [
    ("900,P1,1,2.0,,K1", "missing_order_ts", "order_ts is empty"),
    ("901,P1,1,2.0,31/05/2011 10:00,K1", "unparseable_order_ts",
     "order_ts could not be read from InvoiceDate='31/05/2011 10:00'"),
    ("902,P1,1,2.0,1897-05-01 10:00,K2", "implausible_timestamp",
     "order_ts 1897-05-01 10:00:00 is before sources.earliest_event (1990-01-01)"),
    ("903,P1,1,,2011-05-01 10:00,K2", "missing_unit_price", "unit_price is empty"),
]  # fmt: skip


def feed(drop: Path, good: list[tuple], bad: list[str]) -> None:
    lines = [f"{inv},{product},{qty},{price},2011-05-0{1 + int(inv[-1]) % 7} 10:00,{cust}"
             for inv, product, qty, price, cust in good]  # fmt: skip
    (drop / "2011-05-01.csv").write_text("\n".join([HEADER, *lines, *bad]) + "\n")


@pytest.fixture
def shop(make_config, tmp_path):
    def make(*overrides: str):
        conf, drop = tmp_path / "conf", tmp_path / "drop"
        shutil.copytree(CONF, conf)
        (conf / "sources" / "shop.yaml").write_text(MAPPING)
        drop.mkdir()
        cfg = make_config("sources.mapping=shop", f"sources.root={drop}", *overrides, lake=tmp_path / "lake")
        return cfg.model_copy(update={"conf_dir": str(conf)}), drop

    return make


def revenue(spark, cfg) -> float:
    return tables.read(spark, cfg, "silver.orders").agg(F.sum("amount_base")).first()[0]


def test_bad_and_repeated_rows_are_quarantined_by_reason_and_the_numbers_stay_right(spark, shop):
    cfg, drop = shop("quality.max_rejected_share=0.2")  # 4 bad and 3 repeated of 43 lines
    repeated = [f"{inv},{product},{qty},{price},2011-05-0{1 + int(inv[-1]) % 7} 10:00,{cust}"
                for inv, product, qty, price, cust in GOOD[:3]]  # fmt: skip
    feed(drop, GOOD, [line for line, _, _ in BAD] + repeated)  # one invoice's three lines twice in the file
    result = run_pipeline(spark, cfg, stages=["ingest", "clean", "quality"], progress=lambda _: None)

    batch = tables.read(spark, cfg, "ops.ingest_log").first()["batch_id"]
    quarantine = tables.read(spark, cfg, "quarantine.shop")
    got = sorted((r["rule"], r["reason"]) for r in quarantine.collect())
    twice = [("duplicate_key", f'key {{"InvoiceNo":"{inv}","StockCode":"{p}"}} was delivered before, first in batch '
              f"{batch}") for inv, p, *_ in GOOD[:3]]  # fmt: skip
    assert got == sorted([(rule, reason) for _, rule, reason in BAD] + twice)
    clean = result.report("clean").entries[0]
    assert (clean.rows_in, clean.rows_written, clean.rows_quarantined) == (43, 36, 7)

    orders = tables.read(spark, cfg, "silver.orders")
    assert orders.where(F.col("order_ts").isNull() | F.col("amount").isNull()).count() == 0
    assert orders.where(F.col("is_return")).count() == 0  # "C" ids are not returns without returns_when
    # Each invoice's three lines cost 2.5 + 5 + 7.5 = 15 per unit of its quantity (1, 2, 3, ... over 12 invoices),
    # the repeated lines counted once.
    assert revenue(spark, cfg) == pytest.approx(15.0 * 24)
    assert orders.select("customer_id").distinct().count() == 4
    assert result.report("quality").info["rejected_share"] == {"shop": round(7 / 43, 4)}

    # The same file again under another name: skipped at ingest, logged as a duplicate of the first. And a new
    # day whose file repeats one line of the first day beside 11 new lines.
    shutil.copy(drop / "2011-05-01.csv", drop / "2011-05-01-resent.csv")
    (drop / "2011-05-02.csv").write_text(
        f"{HEADER}\n{repeated[0]}\n777,P1,1,10.0,2011-05-02 10:00,K1\n"
        + "".join(f"88{i},P{i},1,1.0,2011-05-02 11:00,K2\n" for i in range(10))
    )
    result = run_pipeline(spark, cfg, stages=["ingest", "clean", "quality"], progress=lambda _: None)
    ingest = result.report("ingest").entries[0]
    assert [(Path(k).name, Path(v).name) for k, v in ingest.details["files_duplicate"].items()] == [
        ("2011-05-01-resent.csv", "2011-05-01.csv")
    ]
    assert ingest.rows_written == 12  # only the new day's lines
    second = tables.read(spark, cfg, "quarantine.shop").where(F.col("_batch_id") != batch).collect()
    assert [(r["rule"], r["reason"].rsplit(" ", 1)[-1]) for r in second] == [("duplicate_key", batch)]
    assert revenue(spark, cfg) == pytest.approx(15.0 * 24 + 10.0 + 10.0)
    assert tables.read(spark, cfg, "silver.orders").select("customer_id").distinct().count() == 4


def test_a_batch_over_its_rejected_share_stops_the_run_and_publishes_nothing(spark, shop):
    cfg, drop = shop()  # quality.max_rejected_share: 0.05
    # Cancellations with negative quantities, and a mapping that does not say which lines are returns.
    cancelled = ["C990,P1,-2,2.5,2011-05-02 10:00,K1", "C991,P2,-1,5.0,2011-05-02 10:00,K2"]
    feed(drop, GOOD, [line for line, _, _ in BAD[:2]] + cancelled)
    with pytest.raises(DataQualityError) as err:
        run_pipeline(spark, cfg, stages=["ingest", "clean", "quality"], progress=lambda _: None)
    batch = tables.read(spark, cfg, "ops.ingest_log").first()["batch_id"]
    message = str(err.value)
    assert f"source shop batch {batch}: 4 of 40 rows (10.0%) quarantined by clean" in message
    assert "more than max_rejected_share 5.0%" in message
    assert "top rules: negative_quantity (2), missing_order_ts (1), unparseable_order_ts (1)" in message
    assert "nothing published" in message and "expected_rules" in message
    assert not tables.exists(spark, cfg, "silver.orders")
    statuses = tables.read(spark, cfg, "ops.batches").groupBy("status").count().collect()
    assert {r["status"]: r["count"] for r in statuses} == {"staged": 1, "failed": 1}


def test_a_retracted_bad_file_lets_the_next_run_succeed_without_a_fresh_lake(spark, shop, capsys):
    from microseg.cli import main

    cfg, drop = shop()
    feed(drop, GOOD, [])
    stages = ["ingest", "clean", "quality"]
    run_pipeline(spark, cfg, stages=stages, progress=lambda _: None)
    # A bad day: most of its dates unreadable, so its batch fails the gate and every later run would fail too.
    bad = drop / "2011-05-02.csv"
    bad.write_text(f"{HEADER}\n" + "".join(f"80{i},P1,1,2.0,02/05/2011,K1\n" for i in range(5)))
    with pytest.raises(DataQualityError):
        run_pipeline(spark, cfg, stages=stages, progress=lambda _: None)
    bad_batch = tables.read(spark, cfg, "ops.ingest_log").where(F.col("path").endswith("05-02.csv")).first()["batch_id"]
    bad.unlink()
    settings = [f"lake.root={cfg.lake.root}", f"sources.root={drop}", "sources.mapping=shop", "spark.master=local[2]"]
    args = ["--conf", str(Path(cfg.conf_dir) / "local.yaml"), *[f"--set={s}" for s in settings]]
    assert main(["retract", *args, "--source", "shop", "--file", "2011-05-02.csv"]) == 0
    out = capsys.readouterr().out
    assert f"retract: batch {bad_batch} of source shop (1 file(s)) taken back" in out
    assert "bronze.shop: 5 rows deleted" in out and "quarantine" not in out  # the gate published nothing of it
    # A new day delivered meanwhile; the run succeeds as if the bad batch had never arrived.
    (drop / "2011-05-03.csv").write_text(f"{HEADER}\n990,P1,2,50.0,2011-05-03 10:00,K9\n")
    run_pipeline(spark, cfg, stages=stages, progress=lambda _: None)
    assert revenue(spark, cfg) == pytest.approx(15.0 * 24 + 100.0)
    for table in ("bronze.shop", "quarantine.shop"):
        assert tables.read(spark, cfg, table).where(F.col("_batch_id") == bad_batch).count() == 0
    logged = tables.read(spark, cfg, "ops.run_log").where(F.col("stage") == "retract")
    assert {r["source"]: r["rows_in"] for r in logged.collect()} == {"bronze.shop": 5}

    # A published batch taken back by id: the next run rebuilds the source's silver without it, and the file,
    # still in the folder and unchanged, stays out.
    third = tables.read(spark, cfg, "ops.ingest_log").where(F.col("path").endswith("05-03.csv")).first()["batch_id"]
    assert main(["retract", *args, "--source", "shop", "--batch", third]) == 0
    assert "silver.orders: 1 rows deleted" in capsys.readouterr().out
    result = run_pipeline(spark, cfg, stages=stages, progress=lambda _: None)
    assert result.report("clean").entries[0].details["mode"] == "rebuild"
    assert result.report("ingest").entries[0].details["files_new"] == 0
    assert revenue(spark, cfg) == pytest.approx(15.0 * 24)
    assert tables.read(spark, cfg, "silver.customers").where(F.col("crm_id") == "K9").count() == 0


# -- files: each case plants a few dozen order lines in a drop folder -------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
FILE_HEADER = "order_id,customer,ts,product,qty,price"
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
    path.write_bytes("\n".join([FILE_HEADER, *rows, ""]).encode(encoding))
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
    (drop / "semi.csv").write_text(FILE_HEADER.replace(",", ";") + "\no9;z;2025-06-01 10:00:00;p1;1;1.0\n")
    (drop / "zipped.csv").write_bytes(gzip.compress("\n".join([FILE_HEADER, *lines(["d", "e"], start=3)]).encode()))

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
