"""Clean stage: bronze -> typed, standardised silver tables keyed by customer_id, bad rows to quarantine.

Each source is first mapped onto its canonical entity (the mapping's ``columns``), then runs
through an ordered list of rules; a row breaking one goes to quarantine.<source> with the first
rule it breaks and why. Silver is recomputed from all of bronze on every run, so reruns give the
same tables. Rows in must equal rows written plus rows quarantined, or the stage fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg import tables
from microseg.config import Config
from microseg.errors import ConfigError, ReconciliationError
from microseg.identity import anonymous_links, customer_id_from_crm, write_identity_map
from microseg.privacy import tokenise
from microseg.runlog import Entry, RunContext, StageReport
from microseg.sources import CORRUPT, SourceSpec, load_mapping, schema_of
from microseg.sparkops import cached, described
from microseg.standardise import clean_code, rate_column, with_country_code

# Canonical columns each entity needs after mapping (others are optional, null when absent).
REQUIRED = {
    "customers": ["customer_ref", "updated_at"],
    "order_lines": ["order_id", "customer_ref", "order_ts", "product_id", "quantity", "unit_price", "currency"],
    "orders": ["order_id", "customer_ref", "order_ts", "currency", "amount"],
    "order_items": ["order_id", "line_no", "product_id", "quantity", "unit_price"],
    "web_events": ["event_id", "event_ts", "event_type"],
    "email_events": ["event_id", "email_hash", "event_type", "event_ts"],
    "support_tickets": ["ticket_id", "customer_ref", "created_at"],
    "survey_responses": ["response_id", "customer_ref", "submitted_at"],
}
OPTIONAL = {
    # Emails and phones arrive hashed from ingest (privacy.tokenise); names never leave the contact table.
    "customers": {
        "email_hash": "string",
        "email_valid": "boolean",
        "phone_hash": "string",
        "phone_valid": "boolean",
        "country": "string",
        "signup_date": "date",
        "consent_email": "boolean",
        "consent_sms": "boolean",
        "consent_profiling": "boolean",
    },
    "order_lines": {"description": "string", "country": "string", "channel": "string", "consent_profiling": "boolean"},
    "orders": {"discount": "double", "channel": "string", "is_return": "boolean", "offer_code": "string"},
    "order_items": {"category": "string", "description": "string"},
    "web_events": {"anonymous_id": "string", "customer_ref": "string", "session_id": "string", "channel": "string"},
    "email_events": {"campaign_id": "string"},
    "support_tickets": {"channel": "string", "topic": "string", "satisfaction": "int"},
    "survey_responses": {"nps": "int"},
}
TIME_COLUMNS = {
    "customers": ["updated_at"],
    "order_lines": ["order_ts"],
    "orders": ["order_ts"],
    "web_events": ["event_ts"],
    "email_events": ["event_ts"],
    "support_tickets": ["created_at"],
    "survey_responses": ["submitted_at"],
}
# Entities are cleaned in this order: later ones link to the customers and orders of earlier ones.
CLEAN_ORDER = list(REQUIRED)


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    violated: Column


def malformed() -> Rule:
    return Rule("malformed_record", "line could not be parsed with the source schema", F.col(CORRUPT).isNotNull())


def missing(column: str, name: str | None = None, reason: str | None = None) -> Rule:
    return Rule(name or f"missing_{column}", reason or f"{column} is empty", F.col(column).isNull())


def orphan(flag: str, what: str) -> Rule:
    return Rule("orphan_reference", f"refers to a {what} that is not in silver", F.col(flag).isNull())


def future(column: str) -> Rule:
    return Rule("future_timestamp", f"{column} is later than the ingest time", F.col(column) > F.col("_ingested_at"))


def unknown_currency() -> Rule:
    return Rule("unknown_currency", "currency has no rate in sources.currency_rates", F.col("_rate").isNull())


def flag_rules(df: DataFrame, rules: list[Rule]) -> DataFrame:
    """Add _rule and _reason: the first rule the row breaks, or null for a good row."""
    rule, reason = F.lit(None).cast("string"), F.lit(None).cast("string")
    for r in reversed(rules):
        broken = F.coalesce(r.violated, F.lit(False))
        rule = F.when(broken, F.lit(r.name)).otherwise(rule)
        reason = F.when(broken, F.lit(r.reason)).otherwise(reason)
    return df.withColumns({"_rule": rule, "_reason": reason})


Outputs = dict[str, Callable[[DataFrame], DataFrame]]


def canonical(bronze: DataFrame, spec: SourceSpec, mapping_file: str) -> DataFrame:
    """Map a source's columns onto its entity's canonical columns, with timestamps in UTC.

    Raises:
        ConfigError: naming the mapping file, source and column when an expression or a required
            canonical column is wrong.
    """
    metadata = [c for c in bronze.columns if c.startswith("_")]
    # Spark resolves names case-insensitively: a source column named like a canonical one gives way.
    canonical_names = {c.lower() for c in spec.columns}
    mapped = {c: F.col(f"`{c}`") for c in bronze.columns if not c.startswith("_") and c.lower() not in canonical_names}
    for column, expression in spec.columns.items():
        try:
            bronze.select(F.expr(expression)).schema  # noqa: B018 - analyses the expression now
        except AnalysisException as exc:
            raise ConfigError(
                f"source mapping {mapping_file}: source {spec.name}, column {column}: expression {expression!r} "
                f"does not fit the source's schema ({exc.getMessage().splitlines()[0]})"
            ) from None
        mapped[column] = F.expr(expression)
    missing_columns = [c for c in REQUIRED[spec.entity] if c not in mapped]
    if missing_columns:
        raise ConfigError(
            f"source mapping {mapping_file}: source {spec.name} (entity {spec.entity}) has no column(s) "
            f"{missing_columns}; add them to its schema or map them under columns:"
        )
    for column, kind in OPTIONAL[spec.entity].items():
        mapped.setdefault(column, F.lit(None).cast(kind))
    if spec.timezone:
        for column in TIME_COLUMNS.get(spec.entity, []):
            mapped[column] = F.to_utc_timestamp(mapped[column], spec.timezone)
    return bronze.select(*[expr.alias(name) for name, expr in mapped.items()], *metadata)


def check_mapping(spark: SparkSession, cfg: Config) -> None:
    """Validate every source of the mapping against its own schema before anything is read.

    Raises:
        ConfigError: naming the mapping file, the source and the column at fault.
    """
    mapping_file = str(cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml"))
    for spec in load_mapping(cfg).values():
        schema = schema_of(spec)
        unknown = [c for c in [*spec.keys, *([spec.event_time] if spec.event_time else []), *spec.pii]
                   if c not in schema.fieldNames()]  # fmt: skip
        if unknown:
            raise ConfigError(
                f"source mapping {mapping_file}: source {spec.name} names column(s) {unknown} in keys, "
                f"event_time or pii that its schema does not have"
            )
        empty = spark.createDataFrame([], schema).withColumns(
            {
                CORRUPT: F.lit(None).cast("string"),
                "_source_file": F.lit(None).cast("string"),
                "_ingested_at": F.lit(None).cast("timestamp"),
            }
        )
        if spec.pii:
            empty = tokenise(empty, spec.pii, b"mapping-check-only", cfg.sources.default_phone_region)
        canonical(empty, spec, mapping_file)


def read_bronze(spark: SparkSession, cfg: Config, source: str) -> tuple[DataFrame, Observation]:
    """bronze.<source>, and an Observation that counts its rows (``rows``) in the pass that cleans them."""
    rows_in = Observation()
    return tables.read(spark, cfg, f"bronze.{source}").observe(rows_in, F.count(F.lit(1)).alias("rows")), rows_in


def publish(
    cfg: Config, source: str, bronze: DataFrame, rows_in: Observation, flagged: DataFrame, outputs: Outputs
) -> Entry:
    """Write good rows through ``outputs`` (silver table -> transform) and bad ones to quarantine.<source>.

    ``bronze`` and ``rows_in`` come from ``read_bronze``, and ``flagged`` is built from that ``bronze``:
    the rows in are counted in the same pass that flags them, before any join could change them.

    Raises:
        ReconciliationError: if rows in != rows written + rows quarantined.
    """
    has_customer = "customer_id" in flagged.columns
    linked = F.col("customer_id").isNotNull() if has_customer else F.lit(False)
    with cached(flagged) as kept:
        counts = kept.groupBy("_rule", linked.alias("_linked")).count().collect()
        rows_read = rows_in.get["rows"]
        by_rule: dict[str | None, int] = {}
        for row in counts:
            by_rule[row["_rule"]] = by_rule.get(row["_rule"], 0) + row["count"]
        written = by_rule.pop(None, 0)
        quarantined = sum(by_rule.values())
        if rows_read != written + quarantined:
            raise ReconciliationError(
                f"source {source}: {rows_read} rows in bronze but {written} written + {quarantined} quarantined; "
                f"a join in the clean rules duplicated or lost rows"
            )
        good = kept.where(F.col("_rule").isNull())
        for name, transform in outputs.items():
            tables.overwrite(transform(good), cfg, name)
        bronze_columns = [c for c in bronze.columns if not c.startswith("_")]
        tables.overwrite(quarantine_records(kept, source, bronze_columns), cfg, f"quarantine.{source}")
    details: dict = {"quarantined_by_rule": dict(sorted(by_rule.items()))}
    if has_customer:
        good_linked = sum(r["count"] for r in counts if r["_rule"] is None and r["_linked"])
        details["coverage"] = round(good_linked / rows_read, 4) if rows_read else None
    return Entry(source, rows_read, written, quarantined, details=details)


def quarantine_records(flagged: DataFrame, source: str, record_columns: list[str]) -> DataFrame:
    """The rows flagged with a rule, in the quarantine tables' shape: source, rule, reason, the record as JSON."""
    return flagged.where(F.col("_rule").isNotNull()).select(
        F.lit(source).alias("source"),
        F.col("_rule").alias("rule"),
        F.col("_reason").alias("reason"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in record_columns])).alias("record"),
        (F.col(CORRUPT) if CORRUPT in flagged.columns else F.lit(None).cast("string")).alias("raw_line"),
        (F.col("_source_file") if "_source_file" in flagged.columns else F.lit(None).cast("string")).alias(
            "_source_file"
        ),
        (F.col("_batch_id") if "_batch_id" in flagged.columns else F.lit(None).cast("string")).alias("_batch_id"),
    )


def _customer_keys(customers: DataFrame) -> DataFrame:
    """crm_id -> customer_id; unique because silver.customers holds one row per CRM id."""
    return customers.select(F.col("crm_id").alias("customer_ref"), "customer_id")


# -- customers (CRM) ---------------------------------------------------------------------------------


def clean_customers(df: DataFrame, aliases: dict[str, str | None]) -> DataFrame:
    """Standardise CRM rows; of several rows per CRM id the latest updated_at wins, the rest are quarantined."""
    latest_first = F.row_number().over(
        Window.partitionBy("customer_ref").orderBy(F.col("updated_at").desc_nulls_last(), F.col("_source_file"))
    )
    prepared = with_country_code(
        df.withColumn("customer_ref", clean_code("customer_ref")), "country", "country_code", aliases
    ).withColumn("_rank", F.when(F.col(CORRUPT).isNull() & F.col("customer_ref").isNotNull(), latest_first))
    rules = [
        malformed(),
        missing("customer_ref"),
        Rule("superseded_duplicate", "an older CRM row of a customer_ref with a newer updated_at", F.col("_rank") > 1),
    ]
    return flag_rules(prepared, rules).withColumn("customer_id", customer_id_from_crm(F.col("customer_ref")))


def customers_table(good: DataFrame) -> DataFrame:
    return good.select(
        "customer_id",
        F.col("customer_ref").alias("crm_id"),
        "email_hash",
        "phone_hash",
        "email_valid",
        "phone_valid",
        F.col("country_code").alias("country"),
        "signup_date",
        "updated_at",
        "consent_email",
        "consent_sms",
        "consent_profiling",
    )


# -- order lines (one row per invoice line, as in the Online Retail data) ---------------------------


def clean_order_lines(
    df: DataFrame, customers: DataFrame | None, rates: dict[str, float], product_pattern: str | None
) -> DataFrame:
    """Lines of invoices: cancellations become returns; lines without a customer key are quarantined."""
    prepared = df.withColumns(
        {
            "customer_ref": clean_code("customer_ref"),
            "_rate": rate_column(F.col("currency"), rates),
            "is_return": F.col("order_id").startswith("C") | (F.col("quantity") < 0),
            "is_product": F.col("product_id").rlike(product_pattern) if product_pattern else F.lit(True),
        }
    )
    if customers is not None:
        prepared = prepared.join(_customer_keys(customers), on="customer_ref", how="left")
    else:
        prepared = prepared.withColumn("customer_id", customer_id_from_crm(F.col("customer_ref")))
    rules = [
        malformed(),
        missing("customer_ref", "no_customer_key", "no customer key"),
        Rule("negative_price", "unit price is negative (an adjustment such as bad debt)", F.col("unit_price") < 0),
        future("order_ts"),
        unknown_currency(),
        orphan("customer_id", "customer"),
    ]
    return flag_rules(prepared, rules)


def _line_amount() -> Column:
    return F.round(F.col("quantity") * F.col("unit_price") * F.col("_rate"), 2)


def line_items_table(good: DataFrame) -> DataFrame:
    line_no = F.row_number().over(
        Window.partitionBy("order_id").orderBy("product_id", "quantity", "unit_price", "_source_file")
    )
    return good.select(
        "order_id",
        "customer_id",
        line_no.alias("line_no"),
        F.upper(clean_code("product_id")).alias("product_id"),
        # Free text nothing downstream reads: white space only, no Unicode normalisation (a Python UDF per line).
        clean_code("description").alias("description"),
        F.lit(None).cast("string").alias("category"),
        "quantity",
        "unit_price",
        _line_amount().alias("line_amount_base"),
        "is_return",
        "is_product",
    )


def line_orders_table(good: DataFrame) -> DataFrame:
    """One order per invoice; its amount is the sum of its product lines (charges and fees excluded)."""
    product_amount = F.when(F.col("is_product"), F.col("quantity") * F.col("unit_price")).otherwise(0.0)
    return good.groupBy("order_id", "customer_id").agg(
        F.min("order_ts").alias("order_ts"),
        F.first(F.upper("currency"), ignorenulls=True).alias("currency"),
        F.round(F.sum(product_amount), 2).alias("amount"),
        F.round(F.sum(product_amount * F.col("_rate")), 2).alias("amount_base"),
        F.lit(None).cast("double").alias("discount_base"),  # invoice lines carry no discount
        F.coalesce(F.first(F.lower(clean_code("channel")), ignorenulls=True), F.lit("web")).alias("channel"),
        F.max("is_return").alias("is_return"),
        F.lit(None).cast("string").alias("offer_code"),
    )


def line_customers_table(aliases: dict[str, str | None]) -> Callable[[DataFrame], DataFrame]:
    """Customers known only from their orders (no CRM source): no identifiers beyond the shop's key."""

    def build(good: DataFrame) -> DataFrame:
        by_country = (
            good.groupBy("customer_id", "country")
            .count()
            .withColumn(
                "_pick",
                F.row_number().over(Window.partitionBy("customer_id").orderBy(F.desc("count"), F.asc("country"))),
            )
            .where(F.col("_pick") == 1)
            .select("customer_id", "country")
        )
        customers = good.groupBy("customer_id").agg(
            F.first("customer_ref").alias("crm_id"),
            F.to_date(F.min("order_ts")).alias("signup_date"),
            F.max("order_ts").alias("updated_at"),
            F.coalesce(F.max("consent_profiling"), F.lit(True)).alias("consent_profiling"),
        )
        with_country = with_country_code(customers.join(by_country, "customer_id", "left"), "country", "iso", aliases)
        return with_country.select(
            "customer_id",
            "crm_id",
            F.lit(None).cast("string").alias("email_hash"),
            F.lit(None).cast("string").alias("phone_hash"),
            F.lit(None).cast("boolean").alias("email_valid"),
            F.lit(None).cast("boolean").alias("phone_valid"),
            F.col("iso").alias("country"),
            "signup_date",
            "updated_at",
            F.lit(None).cast("boolean").alias("consent_email"),
            F.lit(None).cast("boolean").alias("consent_sms"),
            "consent_profiling",
        )

    return build


# -- orders and items (separate feeds) --------------------------------------------------------------


def clean_orders(df: DataFrame, customers: DataFrame, rates: dict[str, float]) -> DataFrame:
    joined = df.join(_customer_keys(customers), on="customer_ref", how="left").withColumn(
        "_rate", rate_column(F.col("currency"), rates)
    )
    rules = [
        malformed(),
        missing("order_id"),
        Rule("negative_amount", "order amount is negative", F.col("amount") < 0),
        future("order_ts"),
        unknown_currency(),
        orphan("customer_id", "customer"),
    ]
    return flag_rules(joined, rules)


def orders_table(good: DataFrame) -> DataFrame:
    return good.select(
        "order_id",
        "customer_id",
        "order_ts",
        F.upper("currency").alias("currency"),
        "amount",
        F.round(F.col("amount") * F.col("_rate"), 2).alias("amount_base"),
        F.round(F.coalesce(F.col("discount"), F.lit(0.0)) * F.col("_rate"), 2).alias("discount_base"),
        F.lower(clean_code("channel")).alias("channel"),
        F.coalesce(F.col("is_return"), F.lit(False)).alias("is_return"),
        F.upper(clean_code("offer_code")).alias("offer_code"),
    )


def clean_order_items(df: DataFrame, orders: DataFrame) -> DataFrame:
    parents = orders.select(
        "order_id",
        "customer_id",
        F.when(F.col("amount") != 0, F.col("amount_base") / F.col("amount")).alias("_rate"),
        "is_return",
    )
    joined = df.join(parents, on="order_id", how="left")
    return flag_rules(joined, [malformed(), missing("order_id"), orphan("customer_id", "order")])


def items_table(good: DataFrame) -> DataFrame:
    return good.select(
        "order_id",
        "customer_id",
        "line_no",
        F.upper(clean_code("product_id")).alias("product_id"),
        clean_code("description").alias("description"),  # as in line_items_table: white space only
        F.lower(clean_code("category")).alias("category"),
        "quantity",
        "unit_price",
        F.round(F.col("quantity") * F.col("unit_price") * F.coalesce(F.col("_rate"), F.lit(1.0)), 2).alias(
            "line_amount_base"
        ),
        F.coalesce(F.col("is_return"), F.lit(False)).alias("is_return"),
        F.lit(True).alias("is_product"),
    )


# -- engagement ----------------------------------------------------------------------------------------


def clean_web_events(df: DataFrame, customers: DataFrame) -> DataFrame:
    """Logged-in events link by customer_ref; anonymous ones through their anonymous_id's logged-in events."""
    links = anonymous_links(df.where(F.col(CORRUPT).isNull()))
    joined = df.join(links, on="anonymous_id", how="left").withColumn(
        "_ref", F.coalesce(F.col("customer_ref"), F.col("linked_ref"))
    )
    keys = _customer_keys(customers).withColumnRenamed("customer_ref", "_ref")
    joined = joined.join(keys, on="_ref", how="left")
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


def web_events_table(good: DataFrame) -> DataFrame:
    return good.select(
        "event_id",
        "customer_id",
        "anonymous_id",
        "session_id",
        "event_ts",
        F.lower(clean_code("event_type")).alias("event_type"),
        F.lower(clean_code("channel")).alias("channel"),
    )


def clean_email_events(df: DataFrame, customers: DataFrame) -> DataFrame:
    """Email events link to the one CRM customer with the same (hashed) address."""
    owners = (
        customers.where(F.col("email_hash").isNotNull())
        .groupBy("email_hash")
        .agg(F.count("*").alias("_owners"), F.min("customer_id").alias("customer_id"))
    )
    joined = df.join(owners, on="email_hash", how="left")
    rules = [
        malformed(),
        missing("email_hash", "missing_email", "no valid email address"),
        Rule("ambiguous_identity", "email belongs to more than one CRM customer", F.col("_owners") > 1),
        orphan("customer_id", "customer (by email)"),
    ]
    return flag_rules(joined, rules)


def email_events_table(good: DataFrame) -> DataFrame:
    return good.select(
        "event_id", "customer_id", "campaign_id", F.lower(clean_code("event_type")).alias("event_type"), "event_ts"
    )


def clean_by_customer_ref(df: DataFrame, customers: DataFrame, time_column: str) -> DataFrame:
    joined = df.join(_customer_keys(customers), on="customer_ref", how="left")
    return flag_rules(joined, [malformed(), future(time_column), orphan("customer_id", "customer")])


def tickets_table(good: DataFrame) -> DataFrame:
    return good.select(
        "ticket_id",
        "customer_id",
        "created_at",
        F.lower(clean_code("channel")).alias("channel"),
        F.lower(clean_code("topic")).alias("topic"),
        "satisfaction",
    )


def surveys_table(good: DataFrame) -> DataFrame:
    return good.select("response_id", "customer_id", "submitted_at", "nps")


# -- the stage -------------------------------------------------------------------------------------------


def clean_source(
    spark: SparkSession, cfg: Config, spec: SourceSpec, by_entity: dict[str, SourceSpec], mapping_file: str
) -> Entry:
    """Clean one source's bronze table into its silver table(s) and quarantine.<source>."""
    entity = spec.entity
    rates, aliases = cfg.sources.currency_rates, cfg.sources.country_aliases

    def silver(name: str) -> DataFrame:
        return tables.read(spark, cfg, f"silver.{name}")

    bronze, rows_in = read_bronze(spark, cfg, spec.name)
    df = canonical(bronze, spec, mapping_file)
    crm_needed = entity != "customers" and ("customers" in by_entity or entity != "order_lines")
    customers = silver("customers") if crm_needed else None
    match entity:
        case "customers":
            flagged = clean_customers(df, aliases)
            outputs: Outputs = {"silver.customers": customers_table}
        case "order_lines":
            flagged = clean_order_lines(df, customers, rates, spec.product_code_pattern)
            outputs = {"silver.order_items": line_items_table, "silver.orders": line_orders_table}
            if customers is None:
                outputs["silver.customers"] = line_customers_table(aliases)
        case "orders":
            flagged = clean_orders(df, customers, rates)
            outputs = {"silver.orders": orders_table}
        case "order_items":
            flagged = clean_order_items(df, silver("orders"))
            outputs = {"silver.order_items": items_table}
        case "web_events":
            flagged = clean_web_events(df, customers)
            outputs = {"silver.web_events": web_events_table}
        case "email_events":
            flagged = clean_email_events(df, customers)
            outputs = {"silver.email_events": email_events_table}
        case "support_tickets":
            flagged = clean_by_customer_ref(df, customers, "created_at")
            outputs = {"silver.support_tickets": tickets_table}
        case "survey_responses":
            flagged = clean_by_customer_ref(df, customers, "submitted_at")
            outputs = {"silver.survey_responses": surveys_table}
    return publish(cfg, spec.name, bronze, rows_in, flagged, outputs)


def run_clean(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Clean every source of the mapping into silver, in dependency order (customers first)."""
    specs = load_mapping(cfg)
    mapping_file = str(cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml"))
    by_entity = {spec.entity: spec for spec in specs.values()}
    report = StageReport("clean")
    for entity in CLEAN_ORDER:
        spec = by_entity.get(entity)
        if spec is not None:
            with described(spark, f"clean {spec.name} ({entity})"):
                report.entries.append(clean_source(spark, cfg, spec, by_entity, mapping_file))
    with described(spark, "clean: identity map"):
        report.info["identity"] = write_identity_map(spark, cfg)
    return report
