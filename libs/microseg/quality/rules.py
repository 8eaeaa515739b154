"""Row rules: a rule flags the rows that break it, and flagged rows become quarantine records with their reason.

Clean applies rules as it standardises each source; the quality stage applies its YAML rules with the same engine."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType
from pyspark.sql.window import Window

from microseg.runtime.config import QualityRule
from microseg.runtime.lake import CORRUPT


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str | Column  # a Column when the reason quotes the row's value
    violated: Column


def malformed() -> Rule:
    return Rule("malformed_record", "line could not be parsed with the source schema", F.col(CORRUPT).isNotNull())


def undecodable_columns(df: DataFrame) -> Column:
    """The names of ``df``'s text columns holding U+FFFD, which readers put where bytes did not decode in the
    file's encoding (comma-separated; null when none): one expression over every string column."""
    names = [f.name for f in df.schema.fields if isinstance(f.dataType, StringType) and not f.name.startswith("_")]
    found = [F.when(F.col(f"`{n}`").contains("\ufffd"), F.lit(n)) for n in names]
    return F.nullif(F.concat_ws(", ", *found), F.lit("")) if found else F.lit(None).cast("string")


def undecodable(df: DataFrame) -> Rule:
    found = undecodable_columns(df)
    reason = F.concat(
        F.lit("text in "), found, F.lit(" did not decode in the source's encoding; set encoding: in the mapping")
    )
    return Rule("undecodable_text", reason, found.isNotNull())


def missing(column: str, name: str | None = None, reason: str | None = None) -> Rule:
    return Rule(name or f"missing_{column}", reason or f"{column} is empty", F.col(column).isNull())


def orphan(flag: str, what: str) -> Rule:
    return Rule("orphan_reference", f"refers to a {what} that is not in silver", F.col(flag).isNull())


def future(column: str) -> Rule:
    return Rule("future_timestamp", f"{column} is later than the ingest time", F.col(column) > F.col("_ingested_at"))


def before(column: str, earliest: dt.date) -> Rule:
    """An event time before ``earliest`` (sources.earliest_event): a default or mistyped date, not an event."""
    reason = F.concat(
        F.lit(f"{column} "), F.col(column).cast("string"), F.lit(f" is before sources.earliest_event ({earliest})")
    )
    return Rule("implausible_timestamp", reason, F.col(column) < F.lit(dt.datetime.combine(earliest, dt.time())))


def unknown_currency() -> Rule:
    return Rule("unknown_currency", "currency has no rate in sources.currency_rates", F.col("_rate").isNull())


def flag_rules(df: DataFrame, rules: list[Rule]) -> DataFrame:
    """Add _rule and _reason: the first rule the row breaks, or null for a good row.

    A row ``df`` already flags (it has ``_rule``) keeps its rule: rules applied in turn are one ordered list.
    """
    rule, reason = F.lit(None).cast("string"), F.lit(None).cast("string")
    for r in reversed(rules):
        broken = F.coalesce(r.violated, F.lit(False))
        rule = F.when(broken, F.lit(r.name)).otherwise(rule)
        reason = F.when(broken, r.reason if isinstance(r.reason, Column) else F.lit(r.reason)).otherwise(reason)
    if "_rule" in df.columns:
        earlier = F.col("_rule").isNotNull()
        rule = F.when(earlier, F.col("_rule")).otherwise(rule)
        reason = F.when(earlier, F.col("_reason")).otherwise(reason)
    return df.withColumns({"_rule": rule, "_reason": reason})


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


def violation(rule: QualityRule) -> Column:
    """The row-level twin of a rule's expectation: true where a row breaks it (for quarantine rules)."""
    col = F.col(rule.column)
    match rule.expectation:
        case "not_null":
            broken = col.isNull()
        case "unique":
            broken = col.isNotNull() & (F.count(F.lit(1)).over(Window.partitionBy(col)) > 1)
        case "between":
            low = col < F.lit(rule.min) if rule.min is not None else F.lit(False)
            high = col > F.lit(rule.max) if rule.max is not None else F.lit(False)
            broken = low | high
        case "in_set":
            broken = ~col.isin(list(rule.values or []))
        case "regex":
            broken = ~col.rlike(rule.pattern or "")
    return broken & F.expr(rule.where) if rule.where else broken
