"""Clean rules on tiny hand-built DataFrames."""

import datetime as dt

from pyspark.sql import functions as F

from microseg.clean import Rule, clean_customers, clean_orders, flag_rules
from microseg.identity import customer_id_from_crm

KEY = b"unit-test-key-0123456789"
INGESTED = dt.datetime(2026, 1, 1)
CRM_SCHEMA = (
    "customer_ref STRING, first_name STRING, last_name STRING, email STRING, phone STRING, country STRING, "
    "signup_date DATE, updated_at TIMESTAMP, consent_email BOOLEAN, consent_sms BOOLEAN, consent_profiling BOOLEAN, "
    "_corrupt_record STRING, _source_file STRING, _ingested_at TIMESTAMP"
)


def crm_row(ref, email, updated, corrupt=None):
    return (
        ref,
        "Anna",
        "Smith",
        email,
        "+44 20 7946 0001",
        "GB",
        dt.date(2024, 1, 1),
        updated,
        True,
        False,
        True,
        corrupt,
        "f.csv",
        INGESTED,
    )


def test_first_broken_rule_wins(spark):
    df = spark.createDataFrame([(1, -5), (2, 5), (-3, -1), (None, 1)], "a INT, b INT")
    rules = [Rule("a_negative", "a < 0", F.col("a") < 0), Rule("b_negative", "b < 0", F.col("b") < 0)]
    got = {r["a"]: r["_rule"] for r in flag_rules(df, rules).collect()}
    assert got == {1: "b_negative", 2: None, -3: "a_negative", None: None}


def test_crm_latest_updated_wins_and_email_is_normalised(spark):
    rows = [
        crm_row("C1", "  ANNA.Smith@Example.com ", dt.datetime(2024, 1, 2)),
        crm_row("C1", "anna.smith@example.com", dt.datetime(2024, 3, 1)),
        crm_row("C2", "not-an-email", dt.datetime(2024, 1, 2)),
        crm_row(None, None, None, corrupt="#garbled#"),
    ]
    flagged = clean_customers(spark.createDataFrame(rows, CRM_SCHEMA), KEY)
    got = sorted(
        (r["customer_ref"], str(r["updated_at"]), r["_rule"], r["email_valid"])
        for r in flagged.collect()
        if r["customer_ref"]
    )
    assert got == [
        ("C1", "2024-01-02 00:00:00", "superseded_duplicate", True),
        ("C1", "2024-03-01 00:00:00", None, True),
        ("C2", "2024-01-02 00:00:00", None, False),
    ]
    corrupt = flagged.where(F.col("_corrupt_record").isNotNull()).select("_rule").first()[0]
    assert corrupt == "malformed_record"
    # An invalid email is not hashed; a valid one hashes to the same value however it was written.
    hashes = {r["customer_ref"] + str(r["_rule"]): r["email_hash"] for r in flagged.collect() if r["customer_ref"]}
    assert hashes["C1None"] == hashes["C1superseded_duplicate"] and hashes["C1None"] is not None
    assert hashes["C2None"] is None


def test_orders_rules(spark):
    customers = spark.createDataFrame([("C1",)], "crm_id STRING").withColumn(
        "customer_id", customer_id_from_crm(F.col("crm_id"))
    )
    schema = (
        "order_id STRING, customer_ref STRING, order_ts TIMESTAMP, currency STRING, amount DOUBLE, "
        "discount DOUBLE, channel STRING, _corrupt_record STRING, _ingested_at TIMESTAMP"
    )
    ts = dt.datetime(2025, 5, 1)
    rows = [
        ("O1", "C1", ts, "GBP", 10.0, 0.0, "web", None, INGESTED),
        ("O2", "C1", ts, "EUR", -1.0, 0.0, "web", None, INGESTED),
        ("O3", "C1", dt.datetime(2099, 1, 1), "EUR", 1.0, 0.0, "web", None, INGESTED),
        ("O4", "C1", ts, "XXX", 1.0, 0.0, "web", None, INGESTED),
        ("O5", "C9", ts, "EUR", 1.0, 0.0, "web", None, INGESTED),
    ]
    flagged = clean_orders(spark.createDataFrame(rows, schema), customers, {"EUR": 1.0, "GBP": 1.2})
    got = {r["order_id"]: (r["_rule"], r["_rate"]) for r in flagged.collect()}
    assert got == {
        "O1": (None, 1.2),
        "O2": ("negative_amount", 1.0),
        "O3": ("future_timestamp", 1.0),
        "O4": ("unknown_currency", None),
        "O5": ("orphan_reference", 1.0),
    }
