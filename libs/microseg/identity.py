"""Identity resolution: deterministic customer ids and the links from source records to them."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def customer_id_from_crm(crm_id: Column) -> Column:
    """A stable surrogate customer id derived from the CRM id (the same CRM id always maps to it)."""
    return F.concat(F.lit("cu_"), F.substring(F.sha2(F.concat(F.lit("crm:"), crm_id), 256), 1, 20))


def anonymous_links(web_events: DataFrame) -> DataFrame:
    """anonymous_id -> customer_ref, learnt from logged-in events; ids seen with two refs are dropped.

    Returns columns anonymous_id, linked_ref (one row per anonymous id that links to exactly one ref).
    """
    return (
        web_events.where(F.col("customer_ref").isNotNull() & F.col("anonymous_id").isNotNull())
        .groupBy("anonymous_id")
        .agg(F.countDistinct("customer_ref").alias("refs"), F.min("customer_ref").alias("linked_ref"))
        .where(F.col("refs") == 1)
        .select("anonymous_id", "linked_ref")
    )
