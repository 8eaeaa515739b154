"""Bad input of a small orders feed plugged in by a mapping: bad rows quarantined by reason, lines and files delivered
twice counted once, a bad batch taken back, the numbers right; the run stopped only when a batch's rejected share
passes its threshold."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from microseg.runtime import tables
from microseg.runtime.errors import DataQualityError
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

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
