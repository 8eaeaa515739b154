"""The generator: deterministic by seed, and its manifest counts what is really in the files; the next day's files
(``datagen --next-day``): new files only, dated the day, new ids, the same customers, about 1% of the rows."""

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from microseg.cli import main
from microseg.runtime.config import DatagenConfig
from microseg.synthetic.daily import day_frames, next_day, population
from microseg.synthetic.datagen import SOURCES, generate, source_frames
from microseg.synthetic.people import customers_frame

SMALL = DatagenConfig(customers=400, seed=7, partitions=2)


def read_source(spark, out: Path, source: str):
    path = str(out / source)
    if source in ("orders", "order_items"):
        return spark.read.parquet(path)
    if source in ("web_events", "survey_responses"):
        return spark.read.text(path)
    return spark.read.option("header", "true").csv(path)


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    manifest = generate(spark, SMALL, str(out))
    return out, manifest


def test_same_seed_same_data(spark, generated, tmp_path):
    out, manifest = generated
    again = generate(spark, SMALL, str(tmp_path))
    assert again == manifest
    for source in SOURCES:
        first = read_source(spark, out, source)
        second = read_source(spark, tmp_path, source)
        assert first.exceptAll(second).count() == 0 and second.exceptAll(first).count() == 0, source


def test_other_seed_other_data(spark, generated, tmp_path):
    out, _ = generated
    generate(spark, SMALL.model_copy(update={"seed": 8}), str(tmp_path))
    first, second = read_source(spark, out, "orders"), read_source(spark, tmp_path, "orders")
    assert first.exceptAll(second).count() > 0


def test_manifest_file_written(generated):
    out, manifest = generated
    assert json.loads((out / "_manifest.json").read_text()) == manifest
    assert manifest["customers"] == 400


def test_manifest_rows_match_files(spark, generated):
    out, manifest = generated
    for source in SOURCES:
        assert read_source(spark, out, source).count() == manifest["rows"][source], source


def test_manifest_dirt_matches_files(spark, generated):
    """Count each dirt kind from the files by its own signature, not from the generator's labels."""
    out, manifest = generated
    dirt = manifest["dirt"]
    orders = read_source(spark, out, "orders")
    assert orders.where(F.col("amount") < 0).count() == dirt["orders"]["negative_amount"]
    assert orders.where(F.year("order_ts") > 2090).count() == dirt["orders"]["future_timestamp"]
    assert orders.where(F.col("currency") == "XXX").count() == dirt["orders"]["unknown_currency"]
    crm = read_source(spark, out, "crm_customers")
    known_refs = {r[0] for r in crm.where(F.col("customer_ref").startswith("C0")).select("customer_ref").collect()}
    orphan_orders = orders.where(~F.col("customer_ref").isin(list(known_refs))).count()
    assert orphan_orders == dirt["orders"]["orphan_reference"]

    order_ids = orders.select("order_id").distinct()
    items = read_source(spark, out, "order_items")
    assert items.join(order_ids, "order_id", "left_anti").count() == dirt["order_items"]["orphan_reference"]

    garbled = crm.where(F.col("customer_ref").startswith("#garbled"))
    assert garbled.count() == dirt["crm_customers"]["malformed_line"]
    real = crm.where(F.col("customer_ref").startswith("C0"))
    assert real.count() - real.select("customer_ref").distinct().count() == dirt["crm_customers"]["crm_duplicate"]
    # Duplicates upper-case the email; among the originals (lower-case), invalid ones have no "@".
    originals = real.where(F.col("email") == F.lower("email"))
    invalid = originals.where(~F.col("email").rlike(r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$")).count()
    assert invalid == dirt["crm_customers"]["invalid_email"]

    web = read_source(spark, out, "web_events")
    assert web.where(~F.col("value").endswith("}")).count() == dirt["web_events"]["malformed_line"]
    assert web.where(F.col("value").contains('"2099-')).count() == dirt["web_events"]["future_timestamp"]
    surveys = read_source(spark, out, "survey_responses")
    assert surveys.where(~F.col("value").endswith("}")).count() == dirt["survey_responses"].get("malformed_line", 0)

    email = read_source(spark, out, "email_events")
    assert email.where(F.col("email").startswith("unknown.")).count() == dirt["email_events"]["orphan_reference"]
    tickets = read_source(spark, out, "support_tickets")
    assert tickets.where(F.col("customer_ref").startswith("CX")).count() == dirt["support_tickets"]["orphan_reference"]


def test_ground_truth_has_every_customer_and_planted_groups(spark, generated):
    out, _ = generated
    truth = spark.read.parquet(str(out / "_ground_truth"))
    assert truth.count() == 400
    groups = {r["group"] for r in truth.select("group").distinct().collect()}
    assert groups == {"loyal_high_spender", "bargain_hunter", "lapsed", "cart_abandoner", "new_customer"}


# ---- datagen --next-day: one more day of files for the generated data set -------------------------------------

# The key columns of each source (conf/sources/synthetic.yaml) and its event time column, if it has one.
KEYS = {
    "crm_customers": (["customer_ref"], "updated_at"),
    "orders": (["order_id"], "order_ts"),
    "order_items": (["order_id", "line_no"], None),
    "web_events": (["event_id"], "event_ts"),
    "email_events": (["event_id"], "event_ts"),
    "support_tickets": (["ticket_id"], "created_at"),
    "survey_responses": (["response_id"], "submitted_at"),
}
# Planted dirt that is not dated the day or has a key of its own kind (datagen's dirty copies and orphans).
DIRTY_KEY = r"^(D[A-Z]{3}-|OMISSING-|#garbled|BROKEN)"
DAY = dt.date(2026, 1, 1)  # the day after SMALL's end_date


def files_of(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_typed(spark, paths: list[Path], source: str):
    """The rows of ``paths`` (files of ``source``) with the columns the generator writes, typed."""
    names = [str(p) for p in paths]
    if source in ("orders", "order_items"):
        return spark.read.parquet(*names)
    schema = {
        "crm_customers": "customer_ref STRING, first_name STRING, last_name STRING, email STRING, phone STRING, "
        "country STRING, signup_date DATE, updated_at TIMESTAMP, consent_email BOOLEAN, consent_sms BOOLEAN, "
        "consent_profiling BOOLEAN",
        "web_events": "event_id STRING, anonymous_id STRING, customer_ref STRING, session_id STRING, "
        "event_ts TIMESTAMP, event_type STRING, channel STRING",
        "email_events": "event_id STRING, email STRING, campaign_id STRING, event_type STRING, event_ts TIMESTAMP",
        "support_tickets": "ticket_id STRING, customer_ref STRING, created_at TIMESTAMP, channel STRING, "
        "topic STRING, satisfaction INT",
        "survey_responses": "response_id STRING, customer_ref STRING, submitted_at TIMESTAMP, nps INT",
    }[source]
    if source in ("web_events", "survey_responses"):
        return spark.read.schema(schema).option("timestampFormat", "yyyy-MM-dd'T'HH:mm:ss'Z'").json(names)
    options = {"header": "true", "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss"}
    return spark.read.schema(schema).options(**options).csv(names)


@pytest.fixture(scope="module")
def added_day(spark, generated, tmp_path_factory):
    """A copy of the generated data set, its files before, and the same with the next day added."""
    out, manifest = generated
    copy = tmp_path_factory.mktemp("next-day") / "data"
    shutil.copytree(out, copy)
    before = files_of(copy)
    after = next_day(spark, SMALL, str(copy))
    return {"out": copy, "before": before, "manifest": manifest, "after": after, "day": after["days"][-1]}


def day_and_base(spark, added_day, source: str):
    """(rows of the added day's files, rows of the generated files) of ``source``, typed; (None, None) if the
    day has no file of it (a day of 400 customers may have no survey answer)."""
    out, day = added_day["out"], added_day["day"]
    new = [out / f for f in day["files"] if f.startswith(f"{source}/")]
    old = [out / f for f in added_day["before"] if f.startswith(f"{source}/") and Path(f).name[0] not in "_."]
    if not new:
        return None, None
    return read_typed(spark, new, source), read_typed(spark, old, source)


def test_next_day_writes_new_files_only(added_day):
    before, out, day = added_day["before"], added_day["out"], added_day["day"]
    after = files_of(out)
    assert {f: h for f, h in after.items() if f in before and f != "_manifest.json"} == {
        f: h for f, h in before.items() if f != "_manifest.json"
    }, "a file of the generated data set changed"
    added = set(after) - set(before)
    assert added == set(day["files"])
    assert all(Path(f).name.startswith("2026-01-01-") for f in added), sorted(added)
    folders = {f.split("/")[0] for f in added}
    assert {"crm_customers", "orders", "order_items", "web_events", "email_events"} <= folders, folders


def test_next_day_manifest_counts_every_file(spark, added_day):
    first, after, day, out = added_day["manifest"], added_day["after"], added_day["day"], added_day["out"]
    assert after["end_date"] == DAY.isoformat() and day["date"] == DAY.isoformat()
    assert after["base"] == {"customers": 400, "end_date": "2025-12-31", "rows": first["rows"]}
    assert after["customers"] == 400 + day["new_customers"] and day["new_customers"] >= 0
    for source in SOURCES:
        assert after["rows"][source] == first["rows"][source] + day["rows"][source], source
        assert read_source(spark, out, source).count() == after["rows"][source], source
    orders = read_source(spark, out, "orders")
    assert orders.where(F.col("amount") < 0).count() == after["dirt"]["orders"].get("negative_amount", 0)


def test_next_day_rows_are_dated_the_new_day(spark, added_day):
    for source, (keys, event_time) in KEYS.items():
        rows, _ = day_and_base(spark, added_day, source)
        if rows is None:
            continue
        clean = rows.where(~F.col(keys[0]).rlike(DIRTY_KEY))
        assert clean.count() > 0, source
        if source == "order_items":  # items of the day's orders
            assert clean.where(~F.col("order_id").endswith("-D20260101")).count() == 0
        elif source == "crm_customers":  # planted duplicates are a day older than their record
            latest = clean.groupBy("customer_ref").agg(F.max("updated_at").alias("at"))
            assert {r["day"] for r in latest.select(F.to_date("at").alias("day")).distinct().collect()} == {DAY}
        elif event_time:
            days = {r[0] for r in clean.select(F.to_date(event_time)).distinct().collect()}
            assert days == {DAY}, (source, days)


def test_next_day_ids_are_new_and_customers_the_same(spark, added_day):
    day = added_day["day"]
    for source, (keys, _) in KEYS.items():
        rows, base = day_and_base(spark, added_day, source)
        if rows is None or source == "crm_customers":
            continue
        assert rows.select(*keys).join(base.select(*keys), keys, "inner").count() == 0, source
        assert rows.select(*keys).distinct().count() == rows.count(), source
    crm, base_crm = day_and_base(spark, added_day, "crm_customers")
    refs = {r[0] for r in crm.where(F.col("customer_ref").startswith("C0")).select("customer_ref").collect()}
    base_refs = {r[0] for r in base_crm.where(F.col("customer_ref").startswith("C0")).select("customer_ref").collect()}
    new = {f"C{i + 1:08d}" for i in range(day["first_id"], day["first_id"] + day["new_customers"])}
    assert new and not new & base_refs
    assert refs - base_refs == new  # the others are updates of known customers
    signups = crm.where(F.col("customer_ref").isin(*new)).select("signup_date").distinct().collect()
    assert [r[0] for r in signups] == [DAY]
    known = base_refs | new
    for source in ("orders", "web_events", "support_tickets", "survey_responses"):
        rows, _ = day_and_base(spark, added_day, source)
        if rows is None:
            continue
        linked = {
            r[0] for r in rows.where(~F.col(KEYS[source][0][0]).rlike(DIRTY_KEY)).select("customer_ref").collect()
        }
        assert linked - {None} <= known, (source, sorted(linked - known)[:5])
    email, _ = day_and_base(spark, added_day, "email_events")
    addresses = {r[0] for r in email.where(~F.col("event_id").rlike(DIRTY_KEY)).select("email").distinct().collect()}
    crm_addresses = {r[0] for r in base_crm.union(crm).select(F.lower(F.trim("email"))).collect()}
    assert addresses and addresses <= crm_addresses


def test_next_day_is_deterministic(spark, generated, added_day, tmp_path):
    out, _ = generated
    shutil.copytree(out, tmp_path / "data")
    again = next_day(spark, SMALL, str(tmp_path / "data"))
    first = added_day["day"]
    assert again["days"][-1] == first
    for source in SOURCES:
        files = [f for f in first["files"] if f.startswith(f"{source}/")]
        one = read_typed(spark, [added_day["out"] / f for f in files], source)
        two = read_typed(spark, [tmp_path / "data" / f for f in files], source)
        assert one.exceptAll(two).count() == 0 and two.exceptAll(one).count() == 0, source


def test_next_day_refuses_files_left_by_an_interrupted_attempt(spark, generated, tmp_path):
    out, _ = generated
    shutil.copytree(out, tmp_path / "data")
    (tmp_path / "data" / "orders" / "2026-01-01-00.snappy.parquet").write_bytes(b"left over")
    manifest = (tmp_path / "data" / "_manifest.json").read_text()
    with pytest.raises(FileExistsError, match="interrupted"):
        next_day(spark, SMALL, str(tmp_path / "data"))
    assert (tmp_path / "data" / "_manifest.json").read_text() == manifest


def test_returns_of_an_added_day_come_back_a_week_later(spark):
    cfg = SMALL.model_copy(update={"day_share": 0.3})  # enough sales for returns among 400 customers
    days = [{"date": (DAY + dt.timedelta(days=i)).isoformat(), "first_id": 400, "new_customers": 0} for i in range(8)]
    day, week_before = DAY + dt.timedelta(days=7), DAY
    orders = day_frames(spark, cfg, population(spark, cfg, days, day), days[:7], day)["orders"]
    returns = orders.where(F.col("order_type") == "return").select("order_id", "order_ts", "amount").collect()
    assert len(returns) > 5
    assert all(r["order_id"].startswith("RET-O") and r["order_id"].endswith("-D20260101") for r in returns)
    assert {r["order_ts"].date() for r in returns} == {day}
    sales = {
        r["order_id"]: r
        for r in day_frames(spark, cfg, population(spark, cfg, days, week_before), [], week_before)["orders"].collect()
    }
    for r in returns:
        sale = sales[r["order_id"].removeprefix("RET-")]
        assert (r["order_ts"] - sale["order_ts"], r["amount"]) == (dt.timedelta(days=7), sale["amount"])


def test_day_share_is_about_one_percent_at_a_realistic_size(spark):
    """At 5,000 customers, every source's day has 0.6% to 1.5% of the generated rows, all of them 0.8% to 1.25%."""
    cfg = DatagenConfig(customers=5000, seed=11, partitions=2)
    customers = customers_frame(spark, cfg).cache()
    generated = {s: f.count() for s, f in source_frames(customers, cfg).items()}
    customers.unpersist()
    days = [{"date": DAY.isoformat(), "first_id": 5000, "new_customers": 10}]
    people = population(spark, cfg, days, DAY).cache()
    day = {s: f.count() for s, f in day_frames(spark, cfg, people, [], DAY).items()}
    people.unpersist()
    shares = {s: day[s] / generated[s] for s in SOURCES}
    assert all(0.006 <= share <= 0.015 for share in shares.values()), shares
    assert 0.008 <= sum(day.values()) / sum(generated.values()) <= 0.0125, shares


def test_next_day_takes_customers_and_seed_from_the_manifest(tmp_path):
    conf = str(Path(__file__).resolve().parents[2] / "conf" / "local.yaml")
    assert main(["datagen", "--conf", conf, "--next-day", "--customers", "500", "--out", str(tmp_path)]) == 2
