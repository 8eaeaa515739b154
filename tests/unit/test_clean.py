"""Clean rules on tiny hand-built DataFrames."""

import datetime as dt

import pytest
from pyspark.sql import functions as F

from microseg.clean.customers import clean_customers
from microseg.clean.orders import clean_orders
from microseg.quality.rules import Rule, flag_rules
from microseg.runtime.keys import customer_id_from_crm

KEY = b"unit-test-key-0123456789"
INGESTED = dt.datetime(2026, 1, 1)
CRM_SCHEMA = (
    "customer_ref STRING, email_hash STRING, email_valid BOOLEAN, country STRING, signup_date DATE, "
    "updated_at TIMESTAMP, consent_profiling BOOLEAN, _corrupt_record STRING, _source_file STRING, "
    "_ingested_at TIMESTAMP"
)


def crm_row(ref, updated, corrupt=None, country="GB"):
    return (ref, "h", True, country, dt.date(2024, 1, 1), updated, True, corrupt, "f.csv", INGESTED)


def test_first_broken_rule_wins(spark):
    df = spark.createDataFrame([(1, -5), (2, 5), (-3, -1), (None, 1)], "a INT, b INT")
    rules = [Rule("a_negative", "a < 0", F.col("a") < 0), Rule("b_negative", "b < 0", F.col("b") < 0)]
    got = {r["a"]: r["_rule"] for r in flag_rules(df, rules).collect()}
    assert got == {1: "b_negative", 2: None, -3: "a_negative", None: None}


def test_crm_latest_updated_wins(spark):
    rows = [
        crm_row(" C1 ", dt.datetime(2024, 1, 2)),
        crm_row("C1", dt.datetime(2024, 3, 1)),
        crm_row("C2", dt.datetime(2024, 1, 2)),
        crm_row(None, None, corrupt="hmac:abc"),
    ]
    flagged = clean_customers(spark.createDataFrame(rows, CRM_SCHEMA), {})
    got = sorted((r["customer_ref"], str(r["updated_at"]), r["_rule"]) for r in flagged.collect() if r["customer_ref"])
    assert got == [
        ("C1", "2024-01-02 00:00:00", "superseded_duplicate"),
        ("C1", "2024-03-01 00:00:00", None),
        ("C2", "2024-01-02 00:00:00", None),
    ]
    corrupt = flagged.where(F.col("_corrupt_record").isNotNull()).select("_rule").first()[0]
    assert corrupt == "malformed_record"


def test_orders_rules(spark):
    keys = spark.createDataFrame([("crm_id", "C1")], "key_type STRING, key_value STRING").withColumn(
        "customer_ids", F.array(customer_id_from_crm(F.col("key_value")))
    )  # the identity keys (clean.identity) of one CRM customer
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
    flagged = clean_orders(spark.createDataFrame(rows, schema), keys, {"EUR": 1.0, "GBP": 1.2})
    got = {r["order_id"]: (r["_rule"], r["_rate"]) for r in flagged.collect()}
    assert got == {
        "O1": (None, 1.2),
        "O2": ("negative_amount", 1.0),
        "O3": ("future_timestamp", 1.0),
        "O4": ("unknown_currency", None),
        "O5": ("orphan_reference", 1.0),
    }


def test_crm_country_to_iso(spark):
    rows = [
        crm_row("C1", dt.datetime(2024, 1, 2), country="United Kingdom"),
        crm_row("C2", dt.datetime(2024, 1, 2), country=" germany "),
        crm_row("C3", dt.datetime(2024, 1, 2), country="EIRE"),
        crm_row("C4", dt.datetime(2024, 1, 2), country="Atlantis"),
    ]
    flagged = clean_customers(spark.createDataFrame(rows, CRM_SCHEMA), {"EIRE": "IE"})
    got = {r["customer_ref"]: r["country_code"] for r in flagged.collect()}
    assert got == {"C1": "GB", "C2": "DE", "C3": "IE", "C4": None}


def test_canonical_mapping_renames_and_converts_time(spark):
    from microseg.ingest.mapping import SourceSpec, canonical

    bronze = spark.createDataFrame(
        [("536365", "85123A", 6, dt.datetime(2011, 7, 1, 12, 0), 2.55, 17850.0, None)],
        "InvoiceNo STRING, StockCode STRING, Quantity INT, InvoiceDate TIMESTAMP, UnitPrice DOUBLE, "
        "CustomerID DOUBLE, _corrupt_record STRING",
    )
    spec = SourceSpec(
        name="retail",
        entity="order_lines",
        keys=["InvoiceNo"],
        format="csv",
        path="x",
        schema="InvoiceNo STRING",
        timezone="Europe/London",
        columns={
            "order_id": "InvoiceNo",
            "product_id": "StockCode",
            "quantity": "Quantity",
            "order_ts": "InvoiceDate",
            "unit_price": "UnitPrice",
            "currency": "'GBP'",
            "customer_ref": "CAST(CAST(CustomerID AS BIGINT) AS STRING)",
        },
    )
    row = canonical(bronze, spec, "retail.yaml").first()
    assert (row["order_id"], row["customer_ref"], row["currency"]) == ("536365", "17850", "GBP")
    assert row["order_ts"] == dt.datetime(2011, 7, 1, 11, 0)  # BST is UTC+1
    assert row["description"] is None and row["_corrupt_record"] is None


def test_canonical_mapping_errors_name_file_source_and_column(spark):
    import pytest

    from microseg.ingest.mapping import SourceSpec, canonical
    from microseg.runtime.errors import ConfigError

    bronze = spark.createDataFrame([("1",)], "InvoiceNo STRING")
    spec = SourceSpec(
        name="retail",
        entity="order_lines",
        keys=["InvoiceNo"],
        format="csv",
        path="x",
        schema="InvoiceNo STRING",
        columns={"order_id": "InvoiceNumber"},
    )
    with pytest.raises(ConfigError) as err:
        canonical(bronze, spec, "conf/sources/retail.yaml")
    assert all(s in str(err.value) for s in ("conf/sources/retail.yaml", "retail", "order_id", "InvoiceNumber"))
    spec = SourceSpec(
        name="retail",
        entity="order_lines",
        keys=["InvoiceNo"],
        format="csv",
        path="x",
        schema="InvoiceNo STRING",
        columns={"order_id": "InvoiceNo"},
    )
    with pytest.raises(ConfigError) as err:
        canonical(bronze, spec, "conf/sources/retail.yaml")
    assert "customer_ref" in str(err.value)


def test_order_lines_rules_and_returns(spark):
    from microseg.clean.orders import clean_order_lines, line_orders_table

    schema = (
        "order_id STRING, customer_ref STRING, order_ts TIMESTAMP, product_id STRING, quantity INT, "
        "unit_price DOUBLE, currency STRING, _corrupt_record STRING, _ingested_at TIMESTAMP"
    )
    ts = dt.datetime(2011, 5, 1)
    rows = [
        ("1", "17850", ts, "85123A", 6, 2.5, "GBP", None, INGESTED),
        ("1", "17850", ts, "POST", 1, 18.0, "GBP", None, INGESTED),
        ("C2", "17850", ts, "85123A", -2, 2.5, "GBP", None, INGESTED),
        ("3", None, ts, "85123A", 1, 2.5, "GBP", None, INGESTED),
        ("A4", "17850", ts, "B", 1, -11062.06, "GBP", None, INGESTED),
    ]
    from microseg.ingest.mapping import SourceSpec, canonical

    spec = SourceSpec(
        name="l",
        entity="order_lines",
        keys=["InvoiceNo"],
        format="csv",
        path="x",
        schema="order_id STRING",
        returns_when="order_id LIKE 'C%'",
    )
    lines = canonical(spark.createDataFrame(rows, schema).withColumn("_batch_id", F.lit("b-1")), spec, "m.yaml")
    flagged = clean_order_lines(lines, None, {"GBP": 2.0}, r"^[0-9]{5}[A-Z]*$")
    got = [(r["order_id"], r["product_id"], r["_rule"], r["is_return"], r["is_product"]) for r in flagged.collect()]
    assert sorted(got) == [
        ("1", "85123A", None, False, True),
        ("1", "POST", None, False, False),
        ("3", "85123A", "no_customer_key", False, True),
        ("A4", "B", "negative_price", False, False),
        ("C2", "85123A", None, True, True),
    ]
    orders = {r["order_id"]: r for r in line_orders_table(flagged.where("_rule IS NULL")).collect()}
    assert (orders["1"]["amount"], orders["1"]["amount_base"], orders["1"]["is_return"]) == (15.0, 30.0, False)
    assert (orders["C2"]["amount"], orders["C2"]["is_return"]) == (-5.0, True)


def test_emails_are_nfkc_normalised_once_per_distinct_address(spark):
    from microseg.ingest.standardise import normalise_email, with_nfkc

    # "anna@example.com" in full-width letters, at sign and full stop (U+FF41...), on two events.
    fullwidth = "\uff41\uff4e\uff4e\uff41\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d"
    rows = [(1, fullwidth), (2, fullwidth), (3, " \ufb01ona@Example.COM "), (4, None), (5, "ben@example.com")]
    df = spark.createDataFrame(rows, "event_id INT, email STRING")
    normalised = with_nfkc(df, "email")
    assert normalised.columns == ["event_id", "email"]
    got = sorted(tuple(r) for r in normalised.select("*", normalise_email("email").alias("norm")).collect())
    assert got == [
        (1, "anna@example.com", "anna@example.com"),
        (2, "anna@example.com", "anna@example.com"),
        (3, " fiona@Example.COM ", "fiona@example.com"),  # the "fi" ligature is two letters
        (4, None, None),
        (5, "ben@example.com", "ben@example.com"),
    ]
    # The Python UDF reads the distinct addresses (an aggregate), not the event rows.
    plan = normalised._jdf.queryExecution().optimizedPlan().toString()
    udf_input = plan[plan.index("ArrowEvalPython") :].split("\n")[1]
    assert "Aggregate" in udf_input, plan


def test_country_names_and_codes_to_iso_without_a_pass_over_the_data(spark):
    from microseg.ingest.standardise import with_country_code

    values = ["Côte d'Ivoire", " viet  nam ", "usa", "826", "Korea, Republic of", "Unspecified", "", None]
    df = spark.createDataFrame([(v,) for v in values], "country STRING")
    got = dict(with_country_code(df, "country", "iso", {"Unspecified": None, "USA": "US"}).collect())
    assert got == {
        "Côte d'Ivoire": "CI",
        " viet  nam ": "VN",
        "usa": "US",
        "826": "GB",  # ISO numeric code
        "Korea, Republic of": "KR",
        "Unspecified": None,
        "": None,
        None: None,
    }


def test_staging_reconciles_rows_in_with_rows_staged_and_quarantined(spark, make_config):
    import pytest

    from microseg.clean import staging
    from microseg.clean.stage import stage_source
    from microseg.clean.staging import INCREMENTAL, Manifest, Plan
    from microseg.runtime import lake, tables
    from microseg.runtime.errors import ReconciliationError
    from microseg.runtime.sparkops import count_rows

    cfg = make_config()
    rows = spark.createDataFrame(
        [("a", 1, None, "b-1"), ("b", -1, None, "b-1"), ("c", 2, None, "b-2")],
        "id STRING, n INT, _corrupt_record STRING, _batch_id STRING",
    )
    tables.overwrite(rows, cfg, "bronze.src")
    bronze = tables.read(spark, cfg, "bronze.src")
    table = lake.Table("silver.src", "a test silver table", (("id", "string"), ("n", "int")), (lake.OVERWRITE,))
    outputs = {table: lambda good: good.select("id", "n")}
    plan, manifest = Plan("src", ["b-1", "b-2"], INCREMENTAL), Manifest("r1")

    rows, read = count_rows(bronze)
    flagged = flag_rules(rows, [Rule("negative_n", "n < 0", F.col("n") < 0)])
    entry, batches = stage_source(cfg, plan, read, flagged, outputs, ["id", "n"], manifest)
    assert (entry.rows_in, entry.rows_written, entry.rows_quarantined) == (3, 2, 1)
    assert entry.details["quarantined_by_rule"] == {"negative_n": 1}
    assert [b[:2] + b[4:7] for b in batches] == [("src", "b-1", 2, 1, 1), ("src", "b-2", 1, 1, 0)]
    assert sorted(r["id"] for r in staging.staged(spark, cfg, table).collect()) == ["a", "c"]
    quarantined = staging.staged(spark, cfg, lake.quarantine("src")).collect()
    assert [(r["rule"], r["reason"], r["_batch_id"]) for r in quarantined] == [("negative_n", "n < 0", "b-1")]
    assert not tables.exists(spark, cfg, table)  # nothing published: that is the quality gate's

    rows, read = count_rows(bronze)
    doubled = rows.crossJoin(spark.createDataFrame([(1,), (2,)], "copy INT"))  # a join that duplicates rows
    with pytest.raises(ReconciliationError, match="3 rows in bronze but 6 staged"):
        stage_source(cfg, plan, read, flag_rules(doubled, []), outputs, ["id", "n"], manifest)


def test_sources_are_cleaned_in_lanes_after_the_source_of_the_customers():
    from microseg.clean.stage import feeds_customers, lanes

    with_crm = {"customers": None, "orders": None, "order_items": None, "web_events": None}
    assert [e for e in with_crm if feeds_customers(e, with_crm)] == ["customers"]
    assert lanes(["orders", "order_items", "web_events", "email_events"]) == [
        ["orders", "order_items"],  # order items check their order in the staged orders
        ["web_events"],
        ["email_events"],
    ]
    lines_only = {"order_lines": None}  # no CRM: the order lines are the customers' only record
    assert feeds_customers("order_lines", lines_only) and not feeds_customers("order_lines", with_crm)
    assert lanes(["order_lines", "order_items"]) == [["order_lines", "order_items"]]


def test_a_plan_is_fresh_only_when_none_of_its_batches_was_staged_before(spark, make_config):
    import datetime as dt

    from microseg.clean import staging
    from microseg.clean.staging import INCREMENTAL, PUBLISHED, STAGED
    from microseg.ingest.mapping import SourceSpec
    from microseg.runtime import lake, tables

    cfg = make_config()
    spec = SourceSpec(name="src", entity="orders", format="csv", path="src/*.csv", schema="id STRING")
    rows = spark.createDataFrame([("a", "b-1"), ("b", "b-2"), ("c", "b-3")], "id STRING, _batch_id STRING")
    tables.overwrite(rows, cfg, "bronze.src")
    now = dt.datetime(2026, 1, 1)
    logged = [("src", f"src/{b}.csv", 10, 0, 1, b, now, "h" + b, None) for b in ("b-1", "b-2", "b-3")]
    tables.append(spark.createDataFrame(logged, lake.INGEST_LOG.ddl), cfg, lake.INGEST_LOG)

    assert staging.plans(spark, cfg, [spec], False)["src"].fresh  # nothing recorded yet: a first publication
    # b-1 published, b-2 staged by a run that did not publish it (its rows may be in silver): not fresh
    staging.record(spark, cfg, [("src", b, STAGED, INCREMENTAL, 1, 1, 0, "r1", None) for b in ("b-1", "b-2")])
    staging.record(spark, cfg, [("src", "b-1", PUBLISHED, INCREMENTAL, None, None, None, "r1", None)])
    plan = staging.plans(spark, cfg, [spec], False)["src"]
    assert (plan.batches, plan.fresh) == (["b-2", "b-3"], False)
    staging.record(spark, cfg, [("src", "b-2", PUBLISHED, INCREMENTAL, None, None, None, "r2", None)])
    plan = staging.plans(spark, cfg, [spec], False)["src"]
    assert (plan.batches, plan.fresh) == (["b-3"], True)  # only b-3 is left, never staged
    assert not staging.plans(spark, cfg, [spec], True)["src"].fresh  # a rebuild overwrites


def test_staged_rows_read_back_with_their_schema_and_an_unfinished_staging_is_missing(spark, make_config):
    """The staging is plain Parquet; its ``_schema.json``, written after the rows, marks them complete."""
    from microseg.clean import staging
    from microseg.clean.staging import Manifest
    from microseg.runtime import errors, lake, sparkops, storage, tables

    cfg = make_config()
    manifest = Manifest("r1")
    rows = spark.createDataFrame([("t-1", "c-1"), ("t-2", None)], "ticket_id STRING, customer_id STRING")
    staging.stage(rows, cfg, lake.SUPPORT_TICKETS, manifest, "src")
    more = spark.createDataFrame([("t-3", "c-3")], "ticket_id STRING, customer_id STRING")
    staging.stage(more, cfg, lake.SUPPORT_TICKETS, manifest, "src", append=True)
    assert manifest.tables == {"silver.support_tickets": "src"}
    with sparkops.job_group(spark, "unit-read-staged", "read the staging"):
        back = staging.staged(spark, cfg, lake.SUPPORT_TICKETS)
    assert sparkops.jobs_in_group(spark, "unit-read-staged") == 0  # no schema inferred from the files
    assert back.schema.simpleString() == "struct<ticket_id:string,customer_id:string>"
    assert sorted(back.collect()) == [("t-1", "c-1"), ("t-2", None), ("t-3", "c-3")]

    staging.stage(rows.where("false"), cfg, lake.SUPPORT_TICKETS, manifest, "src")  # no rows, not missing
    assert staging.staged(spark, cfg, lake.SUPPORT_TICKETS).count() == 0

    folder = tables.table_path(cfg, lake.staging(lake.SUPPORT_TICKETS))
    storage.remove(cfg, f"{folder}/_schema.json")  # as if killed before the schema
    with pytest.raises(errors.TableMissingError, match=r"nothing is staged for silver\.support_tickets"):
        staging.staged(spark, cfg, lake.SUPPORT_TICKETS)
