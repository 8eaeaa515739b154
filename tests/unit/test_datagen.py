"""The generator: deterministic by seed, and its manifest counts what is really in the files."""

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from microseg.runtime.config import DatagenConfig
from microseg.synthetic.datagen import SOURCES, generate

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
