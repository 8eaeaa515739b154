"""Duplicate keys: a record whose key (the source mapping's ``keys``) was delivered before is quarantined.

A record's key is the JSON of its key columns as the source sent them. The first delivery of a key is the
one in the earliest batch (batch ids sort by delivery), then by file, then by the record's values, so a
daily run that meets a key already in bronze and a rebuild that meets both copies at once quarantine the
same row. The rule applies after the entity's own rules (a row they reject keeps their reason) and names
the batch of the first delivery. Customers have their own update path (the latest ``updated_at`` wins).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg.ingest.mapping import SourceSpec
from microseg.quality.rules import Rule, flag_rules

KEY = "_record_key"


def checks_keys(spec: SourceSpec) -> bool:
    """Whether ``spec``'s records are checked for keys delivered twice (an entity without an update path)."""
    return bool(spec.keys) and spec.entity != "customers"


def record_key(spec: SourceSpec) -> Column:
    """The key of a bronze row of ``spec``: its key columns as JSON (``{"order_id":"o-1"}``)."""
    return F.to_json(F.struct(*[F.col(f"`{k}`") for k in spec.keys]))


def first_deliveries(earlier: DataFrame, spec: SourceSpec, new: DataFrame | None = None) -> DataFrame:
    """The keys of ``earlier`` bronze rows (other batches, already published), each with its first batch; with
    ``new`` (the bronze rows being cleaned), only the keys they carry: a day's run then groups the few of all
    history's keys that it meets again, not every key delivered so far."""
    rows = earlier.select(*[F.col(f"`{k}`") for k in spec.keys], "_batch_id")
    if new is not None:  # on the key columns as read, before each of the earlier rows is written as JSON
        wanted = new.select(*[F.col(f"`{k}`").alias(f"_wanted{i}") for i, k in enumerate(spec.keys)]).distinct()
        same = [rows[f"`{k}`"].eqNullSafe(wanted[f"_wanted{i}"]) for i, k in enumerate(spec.keys)]
        rows = rows.join(wanted, same, "left_semi")
    return rows.groupBy(record_key(spec).alias(KEY)).agg(F.min("_batch_id").alias("_first_batch"))


def flag_duplicates(flagged: DataFrame, earlier: DataFrame | None) -> DataFrame:
    """``flagged`` (with ``_record_key``) with ``duplicate_key`` on each row whose key an ``earlier`` batch or an
    earlier row of these batches delivered; the helper column dropped."""
    values = [F.col(f"`{c}`") for c in flagged.columns if not c.startswith("_")]
    files = ["_source_file"] if "_source_file" in flagged.columns else []  # a database snapshot has none
    order = Window.partitionBy(KEY).orderBy("_batch_id", *files, F.to_json(F.struct(*values)))
    ranked = flagged.withColumns(
        {"_key_rank": F.row_number().over(order), "_first_here": F.first("_batch_id").over(order)}
    )
    if earlier is None:
        ranked = ranked.withColumn("_first_batch", F.lit(None).cast("string"))
    else:
        ranked = ranked.join(earlier, KEY, "left")
    first = F.coalesce(F.col("_first_batch"), F.col("_first_here"))
    rule = Rule(
        "duplicate_key",
        F.concat(F.lit("key "), F.col(KEY), F.lit(" was delivered before, first in batch "), first),
        F.col("_first_batch").isNotNull() | (F.col("_key_rank") > 1),
    )
    return flag_rules(ranked, [rule]).drop(KEY, "_key_rank", "_first_here", "_first_batch")
