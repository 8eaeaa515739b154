"""Clean stage: bronze -> typed, standardised silver tables keyed by customer_id, bad rows to quarantine.

Each source is first mapped onto its canonical entity (the mapping's ``columns``), then runs
through an ordered list of rules; a row breaking one goes to quarantine.<source> with the first
rule it breaks and why. Silver is recomputed from all of bronze on every run, so reruns give the
same tables. Rows in must equal rows written plus rows quarantined, or the stage fails.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from microseg.clean.customers import clean_customers, customers_table, line_customers_table
from microseg.clean.events import (
    clean_by_customer_ref,
    clean_email_events,
    clean_web_events,
    email_events_table,
    surveys_table,
    tickets_table,
    web_events_table,
)
from microseg.clean.identity import write_identity_map
from microseg.clean.orders import (
    clean_order_items,
    clean_order_lines,
    clean_orders,
    items_table,
    line_items_table,
    line_orders_table,
    orders_table,
)
from microseg.ingest.mapping import CLEAN_ORDER, SourceSpec, canonical, load_mapping
from microseg.quality.rules import quarantine_records
from microseg.runtime import tables
from microseg.runtime.config import Config
from microseg.runtime.errors import ReconciliationError
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import cached, described

Outputs = dict[str, Callable[[DataFrame], DataFrame]]


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


# -- customers (CRM) ---------------------------------------------------------------------------------


# -- order lines (one row per invoice line, as in the Online Retail data) ---------------------------


# -- orders and items (separate feeds) --------------------------------------------------------------


# -- engagement ----------------------------------------------------------------------------------------


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
