"""Clean stage: the new bronze batches of every source -> typed, standardised rows, staged for the quality gate.

Per source, the batches of bronze not yet published (``clean.staging.plans``) are mapped onto the source's
entity (the mapping's ``columns``) and run through an ordered list of rules; a row breaking one goes to
quarantine with the first rule it breaks and why. Good rows and quarantined rows are staged
(``clean.staging``): the quality stage validates them and only then publishes them to silver, so silver
never holds a batch that failed the gate. A source is rebuilt from all of its bronze with --full-refresh,
for a database snapshot, and when a published file changed in place. Rows in must equal rows staged plus
rows quarantined, or the stage fails. The source of silver.customers goes first (the others link to its
customers); the others are cleaned side by side (``run.parallel_sources``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.clean import duplicates, staging
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
from microseg.clean.identity import identity_keys
from microseg.clean.identity_staging import stage_identity
from microseg.clean.intake import intake
from microseg.clean.orders import (
    clean_order_items,
    clean_order_lines,
    clean_orders,
    items_table,
    line_items_table,
    line_orders_table,
    orders_table,
)
from microseg.clean.staging import REBUILD, STAGED, BatchCounts, Manifest, Plan
from microseg.ingest.mapping import ENTITIES, SourceSpec, canonical, load_mapping
from microseg.quality.rules import quarantine_records
from microseg.runtime import lake, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import ReconciliationError
from microseg.runtime.lake import Table
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import RowCount, cached, count_rows, described, in_parallel

Outputs = dict[Table, Callable[[DataFrame], DataFrame]]  # silver table -> its shape from the good rows
Cleaned = tuple[DataFrame, Outputs]  # rows flagged by the rules (_rule, _reason), and where good rows go


def stage_source(
    cfg: Config,
    plan: Plan,
    read: RowCount,
    flagged: DataFrame,
    outputs: Outputs,
    bronze_columns: list[str],
    manifest: Manifest,
) -> tuple[Entry, list[tuple]]:
    """Stage good rows through ``outputs`` (silver table -> transform) and bad ones as quarantine.<source>.

    ``flagged`` is built from the plan's bronze rows, counted (``read``) in the pass that flags them, before
    any join of the rules could change them.

    Returns:
        The source's entry, and its ops.batches rows (state ``staged``, with each batch's counts).

    Raises:
        ReconciliationError: if rows in != rows staged + rows quarantined.
    """
    source = plan.source
    has_customer = "customer_id" in flagged.columns
    linked = F.col("customer_id").isNotNull() if has_customer else F.lit(False)
    with cached(flagged) as kept:
        counts = kept.groupBy("_batch_id", "_rule", linked.alias("_linked")).count().collect()
        by_rule: dict[str | None, int] = {}
        by_batch: dict[str, list[int]] = {b: [0, 0] for b in plan.batches}  # batch -> [good, quarantined]
        batch_rules = manifest.batches[source] = {b: BatchCounts(0) for b in plan.batches}
        for row in counts:
            rule, batch, n = row["_rule"], row["_batch_id"], row["count"]
            by_rule[rule] = by_rule.get(rule, 0) + n
            by_batch.setdefault(batch, [0, 0])[rule is not None] += n
            counted = batch_rules.setdefault(batch, BatchCounts(0))
            counted.rows += n
            if rule is not None:
                counted.quarantined[rule] = counted.quarantined.get(rule, 0) + n
        rows_in = read.get["rows"]
        good_rows = by_rule.pop(None, 0)
        quarantined = sum(by_rule.values())
        if rows_in != good_rows + quarantined:
            raise ReconciliationError(
                f"source {source}: {rows_in} rows in bronze but {good_rows} staged + {quarantined} quarantined; "
                f"a join in the clean rules duplicated or lost rows"
            )
        good = kept.where(F.col("_rule").isNull())
        for table, transform in outputs.items():
            staging.stage(transform(good), cfg, table, manifest, source)
        staging.stage(quarantine_records(kept, source, bronze_columns), cfg, lake.quarantine(source), manifest, source)
    details: dict = {"mode": plan.mode, "batches": len(plan.batches)}
    details["quarantined_by_rule"] = dict(sorted(by_rule.items()))
    if has_customer:
        good_linked = sum(r["count"] for r in counts if r["_rule"] is None and r["_linked"])
        details["coverage"] = round(good_linked / rows_in, 4) if rows_in else None
    batch_rows = [
        (source, batch, STAGED, plan.mode, good + bad, good, bad, manifest.run_id, None)
        for batch, (good, bad) in sorted(by_batch.items())
    ]
    return Entry(source, rows_in, good_rows, quarantined, details=details), batch_rows


@dataclass(frozen=True)
class Inputs:
    """What a cleaner may read beside its rows: silver as it will be with what this run staged, and the config."""

    spark: SparkSession
    cfg: Config
    spec: SourceSpec
    plan: Plan
    keys: DataFrame | None  # the identity keys (clean.identity), when the source links to the CRM
    manifest: Manifest
    history: Callable[[], DataFrame]  # every bronze row of the source, mapped onto its entity

    def silver(self, name: str) -> DataFrame:
        return staging.current(self.spark, self.cfg, lake.silver(name), self.manifest)


def _customers(df: DataFrame, given: Inputs) -> Cleaned:
    flagged = clean_customers(df, given.cfg.sources.country_aliases)
    return flagged, {lake.CUSTOMERS: lambda good: _latest(customers_table(good), given)}


def _latest(customers: DataFrame, given: Inputs) -> DataFrame:
    """The staged customers that replace their silver row: the row with the later updated_at wins (the staged
    one on a tie, and over a row without updated_at), as a rebuild from all of bronze would choose."""
    silver = lake.CUSTOMERS
    if given.plan.mode == REBUILD or not tables.exists(given.spark, given.cfg, silver):
        return customers
    known = tables.read(given.spark, given.cfg, silver).select("customer_id", F.col("updated_at").alias("_current"))
    newer = F.coalesce(F.col("updated_at") >= F.col("_current"), F.col("_current").isNull())
    return customers.join(known, "customer_id", "left").where(newer).drop("_current")


def _order_lines(df: DataFrame, given: Inputs) -> Cleaned:
    sources = given.cfg.sources

    def clean(rows: DataFrame) -> DataFrame:
        return clean_order_lines(rows, given.keys, sources.currency_rates, given.spec.product_code_pattern)

    outputs: Outputs = {lake.ORDER_ITEMS: line_items_table, lake.ORDERS: line_orders_table}
    if given.keys is None:  # no CRM source: the order lines are the customers' only record
        derive = line_customers_table(sources.country_aliases)
        if given.plan.mode == REBUILD:
            outputs[lake.CUSTOMERS] = derive
        else:  # a customer of the new batches is derived again from all of their lines

            def customers_of(good: DataFrame) -> DataFrame:
                lines = clean(given.history()).where(F.col("_rule").isNull())
                return derive(lines.join(good.select("customer_id").distinct(), "customer_id", "left_semi"))

            outputs[lake.CUSTOMERS] = customers_of
    return clean(df), outputs


def _orders(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_orders(df, given.keys, given.cfg.sources.currency_rates), {lake.ORDERS: orders_table}


def _order_items(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_order_items(df, given.silver("orders")), {lake.ORDER_ITEMS: items_table}


def _web_events(df: DataFrame, given: Inputs) -> Cleaned:
    return clean_web_events(df, given.keys, given.plan.mode != REBUILD), {lake.WEB_EVENTS: web_events_table}


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


READS = {"order_items": ("orders", "order_lines")}  # entity -> the entities whose staged rows its cleaner reads


def feeds_customers(entity: str, by_entity: dict[str, SourceSpec]) -> bool:
    """Whether ``entity``'s source stages silver.customers: the CRM, or order lines when there is no CRM (then the
    lines are the customers' only record). It is cleaned first; the others link through its identity map."""
    return entity == "customers" or (entity == "order_lines" and "customers" not in by_entity)


def lanes(entities: list[str]) -> list[list[str]]:
    """``entities`` (in ENTITIES order) as lanes cleaned side by side, each in order: an entity joins the lane
    of one it reads (READS), else starts its own."""
    found: list[list[str]] = []
    for entity in entities:
        lane = next((lane for lane in found if set(READS.get(entity, ())) & set(lane)), None)
        if lane is None:
            found.append([entity])
        else:
            lane.append(entity)
    return found


def clean_source(
    spark: SparkSession, cfg: Config, spec: SourceSpec, plan: Plan, keys: DataFrame | None, manifest: Manifest
) -> tuple[Entry, list[tuple]]:
    """Stage one source's planned batches as its silver table(s) and quarantine.<source>; ``keys``: the
    identity keys (``clean.identity.identity_keys``) it links its rows through, None for the source of the
    customers."""
    entity = spec.entity
    mapping_file = str(cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml"))
    everything = tables.read(spark, cfg, lake.bronze(spec.name))
    bronze, read = count_rows(everything if plan.mode == REBUILD else everything.where(plan.condition))

    def mapped(rows: DataFrame) -> DataFrame:  # on the entity's columns, flagged by the intake rules
        return intake(canonical(rows, spec, mapping_file), entity, cfg.sources.earliest_event)

    keyed = duplicates.checks_keys(spec)
    if keyed:
        bronze = bronze.withColumn(duplicates.KEY, duplicates.record_key(spec))

    given = Inputs(spark, cfg, spec, plan, keys, manifest, lambda: mapped(everything))
    flagged, outputs = CLEANERS[entity](mapped(bronze), given)
    if keyed:
        if plan.mode == REBUILD:
            first = None
        else:
            earlier, new = everything.where(f"NOT ({plan.condition})"), everything.where(plan.condition)
            first = duplicates.first_deliveries(earlier, spec, new)
        flagged = duplicates.flag_duplicates(flagged, first)
    bronze_columns = [c for c in bronze.columns if not c.startswith("_")]
    return stage_source(cfg, plan, read, flagged, outputs, bronze_columns, manifest)


def run_clean(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Stage the new batches of every source, in dependency order (customers first), for the quality gate."""
    specs = load_mapping(cfg)
    by_entity = {spec.entity: spec for spec in specs.values()}
    report = StageReport("clean")
    staging.clear(cfg)
    with described(spark, "clean: the batches to stage"):
        plans = staging.plans(spark, cfg, list(specs.values()), run.full_refresh)
    manifest = Manifest(run.run_id)
    cleaned: dict[str, tuple[Entry, list[tuple]]] = {}  # entity -> its entry and ops.batches rows
    for entity, spec in by_entity.items():
        plan = plans.get(spec.name)
        if plan is None:
            cleaned[entity] = Entry(spec.name, 0, 0, 0, details={"mode": "nothing new", "batches": 0}), []
        else:
            manifest.plans[spec.name] = plan

    def lane(entities: list[str], keys: DataFrame | None = None) -> Callable[[], None]:
        def clean() -> None:
            for entity in entities:
                spec, plan = by_entity[entity], plans[by_entity[entity].name]
                with described(spark, f"clean {spec.name} ({entity}, {plan.mode}, {len(plan.batches)} batches)"):
                    cleaned[entity] = clean_source(spark, cfg, spec, plan, keys, manifest)

        return clean

    todo = [e for e in ENTITIES if e in by_entity and e not in cleaned]
    for entity in [e for e in todo if feeds_customers(e, by_entity)]:
        lane([entity])()
    customers_keys = None
    if lake.CUSTOMERS.name in manifest.tables:  # the other sources link to these customers through the map
        with described(spark, "clean: identity map of the customers"):
            customers_keys = stage_identity(spark, cfg, manifest, anonymous_ids=False)
    others = lanes([e for e in todo if not feeds_customers(e, by_entity)])
    if others:
        # Cached once for every lane: each use would otherwise plan the map's and conflicts' Delta scans again.
        with cached(identity_keys(lambda t: staging.current(spark, cfg, t, manifest))) as keys:
            in_parallel(spark, [lane(entities, keys) for entities in others], cfg.run.parallel_sources)
    report.entries = [cleaned[e][0] for e in ENTITIES if e in cleaned]
    batch_rows = [row for e in ENTITIES if e in cleaned for row in cleaned[e][1]]
    if lake.CUSTOMERS.name in manifest.tables or lake.WEB_EVENTS.name in manifest.tables:
        with described(spark, "clean: identity map, with the web events' anonymous ids"):
            report.info["identity"] = stage_identity(spark, cfg, manifest, True, customers_keys)
    if manifest.tables:
        staging.record(spark, cfg, batch_rows)
        staging.write_manifest(cfg, manifest)
    report.info["staged"] = sorted(manifest.tables)
    return report
