"""Clean stage: bronze -> typed, standardised silver tables keyed by customer_id, bad rows to quarantine.

Each source is first mapped onto its canonical entity (the mapping's ``columns``), then runs
through an ordered list of rules; a row breaking one goes to quarantine.<source> with the first
rule it breaks and why. Silver is recomputed from all of bronze on every run, so reruns give the
same tables. Rows in must equal rows written plus rows quarantined, or the stage fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
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
from microseg.clean.identity import identity_keys, write_identity_map
from microseg.clean.orders import (
    clean_order_items,
    clean_order_lines,
    clean_orders,
    items_table,
    line_items_table,
    line_orders_table,
    orders_table,
)
from microseg.ingest.mapping import ENTITIES, SourceSpec, canonical, load_mapping
from microseg.quality.rules import quarantine_records
from microseg.runtime import lake, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import ReconciliationError
from microseg.runtime.lake import Table
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import RowCount, cached, count_rows, described

Outputs = dict[Table, Callable[[DataFrame], DataFrame]]  # silver table -> its shape from the good rows
Cleaned = tuple[DataFrame, Outputs]  # rows flagged by the rules (_rule, _reason), and where good rows go


def read_bronze(spark: SparkSession, cfg: Config, source: str) -> tuple[DataFrame, RowCount]:
    """The bronze table of ``source``, and its row count (``rows``), taken in the pass that cleans them."""
    return count_rows(tables.read(spark, cfg, lake.bronze(source)))


def publish(
    cfg: Config, source: str, bronze: DataFrame, rows_in: RowCount, flagged: DataFrame, outputs: Outputs
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
        for table, transform in outputs.items():
            tables.overwrite(transform(good), cfg, table)
        bronze_columns = [c for c in bronze.columns if not c.startswith("_")]
        tables.overwrite(quarantine_records(kept, source, bronze_columns), cfg, lake.quarantine(source))
    details: dict = {"quarantined_by_rule": dict(sorted(by_rule.items()))}
    if has_customer:
        good_linked = sum(r["count"] for r in counts if r["_rule"] is None and r["_linked"])
        details["coverage"] = round(good_linked / rows_read, 4) if rows_read else None
    return Entry(source, rows_read, written, quarantined, details=details)


@dataclass(frozen=True)
class Inputs:
    """What a cleaner may read beside its own source: silver tables cleaned before it, and the config."""

    spark: SparkSession
    cfg: Config
    spec: SourceSpec
    keys: DataFrame | None  # the identity keys (clean.identity), when the source links to the CRM

    def silver(self, name: str) -> DataFrame:
        return tables.read(self.spark, self.cfg, lake.silver(name))


def _customers(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_customers(df, given.cfg.sources.country_aliases), {lake.CUSTOMERS: customers_table}


def _order_lines(df: DataFrame, given: Inputs) -> Cleaned:
    sources = given.cfg.sources
    flagged = clean_order_lines(df, given.keys, sources.currency_rates, given.spec.product_code_pattern)
    outputs: Outputs = {lake.ORDER_ITEMS: line_items_table, lake.ORDERS: line_orders_table}
    if given.keys is None:  # no CRM source: the order lines are the customers' only record
        outputs[lake.CUSTOMERS] = line_customers_table(sources.country_aliases)
    return flagged, outputs


def _orders(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_orders(df, given.keys, given.cfg.sources.currency_rates), {lake.ORDERS: orders_table}


def _order_items(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_order_items(df, given.silver("orders")), {lake.ORDER_ITEMS: items_table}


def _web_events(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_web_events(df, given.keys), {lake.WEB_EVENTS: web_events_table}


def _email_events(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_email_events(df, given.keys), {lake.EMAIL_EVENTS: email_events_table}


def _support_tickets(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_by_customer_ref(df, given.keys, "created_at"), {lake.SUPPORT_TICKETS: tickets_table}


def _survey_responses(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_by_customer_ref(df, given.keys, "submitted_at"), {lake.SURVEY_RESPONSES: surveys_table}


# Entity -> cleaner: the rows flagged by its rules, and the silver table(s) its good rows feed.
CLEANERS: dict[str, Callable[[DataFrame, Inputs], Cleaned]] = {
    "customers": _customers,
    "order_lines": _order_lines,
    "orders": _orders,
    "order_items": _order_items,
    "web_events": _web_events,
    "email_events": _email_events,
    "support_tickets": _support_tickets,
    "survey_responses": _survey_responses,
}
assert set(CLEANERS) == set(ENTITIES), "every entity has a cleaner"


def clean_source(spark: SparkSession, cfg: Config, spec: SourceSpec, by_entity: dict[str, SourceSpec]) -> Entry:
    """Clean one source's bronze table into its silver table(s) and quarantine.<source>."""
    entity = spec.entity
    bronze, rows_in = read_bronze(spark, cfg, spec.name)
    df = canonical(bronze, spec, str(cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml")))
    crm_needed = entity != "customers" and ("customers" in by_entity or entity != "order_lines")
    keys = identity_keys(spark, cfg) if crm_needed else None
    flagged, outputs = CLEANERS[entity](df, Inputs(spark, cfg, spec, keys))
    entry = publish(cfg, spec.name, bronze, rows_in, flagged, outputs)
    if lake.CUSTOMERS in outputs:  # later sources link to these customers through the identity map
        with described(spark, "clean: identity map of the customers"):
            write_identity_map(spark, cfg, anonymous_ids=False)
    return entry


def run_clean(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Clean every source of the mapping into silver, in dependency order (customers first)."""
    specs = load_mapping(cfg)
    by_entity = {spec.entity: spec for spec in specs.values()}
    report = StageReport("clean")
    for entity in ENTITIES:
        spec = by_entity.get(entity)
        if spec is not None:
            with described(spark, f"clean {spec.name} ({entity})"):
                report.entries.append(clean_source(spark, cfg, spec, by_entity))
    with described(spark, "clean: identity map, with the web events' anonymous ids"):
        report.info["identity"] = write_identity_map(spark, cfg, anonymous_ids=True)
    return report
