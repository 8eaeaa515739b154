"""Clean stage: bronze -> typed, standardised silver tables keyed by customer_id, bad rows to quarantine.

Each source runs through an ordered list of rules; a row breaking one goes to
quarantine.<source> with the first rule it breaks and why. Rows in must equal
rows written plus rows quarantined, or the stage fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg import tables
from microseg.config import Config
from microseg.errors import ReconciliationError
from microseg.identity import anonymous_links, customer_id_from_crm
from microseg.privacy import hash_key, hmac_sha256
from microseg.runlog import Entry, RunContext, StageReport
from microseg.sources import CORRUPT, load_mapping

EMAIL_PATTERN = r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$"


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    violated: Column


def malformed() -> Rule:
    return Rule("malformed_record", "line could not be parsed with the source schema", F.col(CORRUPT).isNotNull())


def missing(column: str) -> Rule:
    return Rule(f"missing_{column}", f"{column} is empty", F.col(column).isNull())


def orphan(flag: str, what: str) -> Rule:
    return Rule("orphan_reference", f"refers to a {what} that is not in silver", F.col(flag).isNull())


def future(column: str) -> Rule:
    return Rule("future_timestamp", f"{column} is later than the ingest time", F.col(column) > F.col("_ingested_at"))


def flag_rules(df: DataFrame, rules: list[Rule]) -> DataFrame:
    """Add _rule and _reason: the first rule the row breaks, or null for a good row."""
    rule, reason = F.lit(None).cast("string"), F.lit(None).cast("string")
    for r in reversed(rules):
        broken = F.coalesce(r.violated, F.lit(False))
        rule = F.when(broken, F.lit(r.name)).otherwise(rule)
        reason = F.when(broken, F.lit(r.reason)).otherwise(reason)
    return df.withColumns({"_rule": rule, "_reason": reason})


def publish(
    spark: SparkSession,
    cfg: Config,
    source: str,
    bronze: DataFrame,
    flagged: DataFrame,
    silver: dict[str, list[Column | str]],
) -> Entry:
    """Write good rows to the ``silver`` tables (name -> columns) and bad ones to quarantine.<source>.

    Raises:
        ReconciliationError: if rows in != rows written + rows quarantined.
    """
    rows_in = bronze.count()
    flagged = flagged.cache()
    by_rule = {r["_rule"]: r["count"] for r in flagged.groupBy("_rule").count().collect()}
    written = by_rule.pop(None, 0)
    quarantined = sum(by_rule.values())
    if rows_in != written + quarantined:
        flagged.unpersist()
        raise ReconciliationError(
            f"source {source}: {rows_in} rows in bronze but {written} written + {quarantined} quarantined; "
            f"a join in the clean rules duplicated or lost rows"
        )
    for name, columns in silver.items():
        tables.overwrite(flagged.where(F.col("_rule").isNull()).select(*columns), cfg, name)
    bronze_columns = [c for c in bronze.columns if not c.startswith("_")]
    tables.overwrite(
        flagged.where(F.col("_rule").isNotNull()).select(
            F.lit(source).alias("source"),
            F.col("_rule").alias("rule"),
            F.col("_reason").alias("reason"),
            F.to_json(F.struct(*bronze_columns)).alias("record"),
            F.col(CORRUPT).alias("raw_line"),
            "_source_file",
            "_batch_id",
        ),
        cfg,
        f"quarantine.{source}",
    )
    flagged.unpersist()
    return Entry(source, rows_in, written, quarantined, details={"quarantined_by_rule": dict(sorted(by_rule.items()))})


def clean_customers(bronze: DataFrame, key: bytes) -> DataFrame:
    """Standardise CRM rows; of several rows per CRM id the latest updated_at wins, the rest are quarantined."""
    email = F.lower(F.trim(F.col("email")))
    phone_digits = F.regexp_replace(F.col("phone"), r"[^0-9+]", "")
    latest_first = F.row_number().over(
        Window.partitionBy("customer_ref").orderBy(F.col("updated_at").desc_nulls_last(), F.col("_source_file"))
    )
    prepared = bronze.withColumns(
        {
            "customer_ref": F.trim("customer_ref"),
            "email_norm": email,
            "email_valid": email.rlike(EMAIL_PATTERN),
            "phone_norm": F.when(F.length(phone_digits) >= 6, phone_digits),
        }
    ).withColumn("_rank", F.when(F.col(CORRUPT).isNull() & F.col("customer_ref").isNotNull(), latest_first))
    rules = [
        malformed(),
        missing("customer_ref"),
        Rule("superseded_duplicate", "an older CRM row of a customer_ref with a newer updated_at", F.col("_rank") > 1),
    ]
    flagged = flag_rules(prepared, rules)
    return flagged.withColumns(
        {
            "customer_id": customer_id_from_crm(F.col("customer_ref")),
            "email_hash": hmac_sha256(F.when(F.col("email_valid"), F.col("email_norm")), key),
            "phone_hash": hmac_sha256(F.col("phone_norm"), key),
        }
    )


def customer_columns() -> list[Column | str]:
    return [
        "customer_id",
        F.col("customer_ref").alias("crm_id"),
        "email_hash",
        "phone_hash",
        F.coalesce(F.col("email_valid"), F.lit(False)).alias("email_valid"),
        F.upper(F.trim("country")).alias("country"),
        "signup_date",
        "updated_at",
        "consent_email",
        "consent_sms",
        "consent_profiling",
    ]


def contact_columns() -> list[Column | str]:
    return [
        "customer_id",
        F.trim("first_name").alias("first_name"),
        F.trim("last_name").alias("last_name"),
        F.when(F.col("email_valid"), F.col("email_norm")).alias("email"),
        F.col("phone_norm").alias("phone"),
    ]


def _lookup(df: DataFrame, keys: DataFrame, on: str) -> DataFrame:
    """Left join on a key that is unique in ``keys`` (checked by construction: keys are distinct)."""
    return df.join(keys, on=on, how="left")


def _customer_keys(customers: DataFrame) -> DataFrame:
    return customers.select(F.col("crm_id").alias("customer_ref"), "customer_id")


def clean_orders(bronze: DataFrame, customers: DataFrame, rates: dict[str, float]) -> DataFrame:
    rate = F.element_at(F.create_map(*[F.lit(x) for kv in rates.items() for x in kv]), F.upper(F.col("currency")))
    joined = _lookup(bronze, _customer_keys(customers), "customer_ref").withColumn("_rate", rate)
    rules = [
        malformed(),
        missing("order_id"),
        Rule("negative_amount", "order amount is negative", F.col("amount") < 0),
        future("order_ts"),
        Rule("unknown_currency", "currency has no rate in sources.currency_rates", F.col("_rate").isNull()),
        orphan("customer_id", "customer"),
    ]
    return flag_rules(joined, rules)


def order_columns() -> list[Column | str]:
    return [
        "order_id",
        "customer_id",
        "order_ts",
        F.upper("currency").alias("currency"),
        "amount",
        F.round(F.col("amount") * F.col("_rate"), 2).alias("amount_base"),
        F.round(F.coalesce(F.col("discount"), F.lit(0.0)) * F.col("_rate"), 2).alias("discount_base"),
        F.lower(F.trim("channel")).alias("channel"),
    ]


def clean_order_items(bronze: DataFrame, orders: DataFrame) -> DataFrame:
    parents = orders.select(
        "order_id", "customer_id", F.when(F.col("amount") != 0, F.col("amount_base") / F.col("amount")).alias("_rate")
    )
    joined = _lookup(bronze, parents, "order_id")
    return flag_rules(joined, [malformed(), missing("order_id"), orphan("customer_id", "order")])


def order_item_columns() -> list[Column | str]:
    return [
        "order_id",
        "customer_id",
        "line_no",
        "product_id",
        F.lower(F.trim("category")).alias("category"),
        "quantity",
        "unit_price",
        F.round(F.col("quantity") * F.col("unit_price") * F.coalesce(F.col("_rate"), F.lit(1.0)), 2).alias(
            "line_amount_base"
        ),
    ]


def clean_web_events(bronze: DataFrame, customers: DataFrame) -> DataFrame:
    """Logged-in events link by customer_ref; anonymous ones through their anonymous_id's logged-in events."""
    links = anonymous_links(bronze.where(F.col(CORRUPT).isNull()))
    joined = _lookup(bronze, links, "anonymous_id").withColumn(
        "_ref", F.coalesce(F.col("customer_ref"), F.col("linked_ref"))
    )
    keys = _customer_keys(customers).withColumnRenamed("customer_ref", "_ref")
    joined = _lookup(joined, keys, "_ref")
    rules = [
        malformed(),
        missing("event_id"),
        future("event_ts"),
        Rule(
            "orphan_reference",
            "logged-in customer_ref is not in silver",
            F.col("customer_ref").isNotNull() & F.col("customer_id").isNull(),
        ),
    ]
    return flag_rules(joined, rules)


def web_event_columns() -> list[Column | str]:
    return ["event_id", "customer_id", "anonymous_id", "session_id", "event_ts", "event_type", "channel"]


def clean_email_events(bronze: DataFrame, customers: DataFrame, key: bytes) -> DataFrame:
    by_hash = (
        customers.where(F.col("email_hash").isNotNull())
        .groupBy("email_hash")
        .agg(F.count("*").alias("_owners"), F.min("customer_id").alias("customer_id"))
    )
    hashed = bronze.withColumn("email_hash", hmac_sha256(F.lower(F.trim(F.col("email"))), key))
    joined = _lookup(hashed, by_hash, "email_hash")
    rules = [
        malformed(),
        missing("email"),
        Rule("ambiguous_identity", "email belongs to more than one CRM customer", F.col("_owners") > 1),
        orphan("customer_id", "customer (by email)"),
    ]
    return flag_rules(joined, rules)


def email_event_columns() -> list[Column | str]:
    return ["event_id", "customer_id", "campaign_id", F.lower("event_type").alias("event_type"), "event_ts"]


def clean_by_customer_ref(bronze: DataFrame, customers: DataFrame, time_column: str) -> DataFrame:
    joined = _lookup(bronze, _customer_keys(customers), "customer_ref")
    return flag_rules(joined, [malformed(), future(time_column), orphan("customer_id", "customer")])


def ticket_columns() -> list[Column | str]:
    return ["ticket_id", "customer_id", "created_at", "channel", "topic", "satisfaction"]


def survey_columns() -> list[Column | str]:
    return ["response_id", "customer_id", "submitted_at", "nps"]


def run_clean(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Clean every source of the mapping into silver, in dependency order (customers first)."""
    key = hash_key(cfg)
    specs = load_mapping(cfg)
    by_entity = {spec.entity: name for name, spec in specs.items()}
    report = StageReport("clean")

    def bronze(entity: str) -> DataFrame:
        return tables.read(spark, cfg, f"bronze.{by_entity[entity]}")

    def silver(name: str) -> DataFrame:
        return tables.read(spark, cfg, f"silver.{name}")

    crm = bronze("customers")
    outputs = {"silver.customers": customer_columns(), "silver.customer_contact": contact_columns()}
    report.entries.append(publish(spark, cfg, by_entity["customers"], crm, clean_customers(crm, key), outputs))
    customers = silver("customers")

    steps: list[tuple[str, str, Callable[[DataFrame], DataFrame], list]] = [
        ("orders", "orders", lambda b: clean_orders(b, customers, cfg.sources.currency_rates), order_columns()),
        ("order_items", "order_items", lambda b: clean_order_items(b, silver("orders")), order_item_columns()),
        ("web_events", "web_events", lambda b: clean_web_events(b, customers), web_event_columns()),
        ("email_events", "email_events", lambda b: clean_email_events(b, customers, key), email_event_columns()),
        (
            "support_tickets",
            "support_tickets",
            lambda b: clean_by_customer_ref(b, customers, "created_at"),
            ticket_columns(),
        ),
        (
            "survey_responses",
            "survey_responses",
            lambda b: clean_by_customer_ref(b, customers, "submitted_at"),
            survey_columns(),
        ),
    ]
    for entity, table, transform, columns in steps:
        if entity not in by_entity:
            continue
        raw = bronze(entity)
        outputs = {f"silver.{table}": columns}
        report.entries.append(publish(spark, cfg, by_entity[entity], raw, transform(raw), outputs))
    return report
