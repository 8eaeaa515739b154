"""Keyed hashing of direct identifiers (HMAC-SHA256) with Spark built-ins, key from the environment."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from microseg.ingest.standardise import clean_text, is_valid_email, normalise_email, phone_e164
from microseg.runtime.keys import customer_id_from_crm, hmac_sha256
from microseg.runtime.lake import CORRUPT


def tokenise(df: DataFrame, pii: dict[str, str], key: bytes, region: str) -> DataFrame:
    """Replace direct identifiers with keyed hashes, as early as ingest, so no raw value reaches bronze.

    For an ``email`` column c: c_hash (HMAC of the normalised address, null if invalid) and c_valid
    (null when empty). For a ``phone`` column: c_hash (HMAC of its E.164 form) and c_valid. Name and
    address columns are dropped. An unparseable line (``_corrupt_record``) of such a source is kept
    only as its HMAC, so it can be matched against the feed without being stored.
    """
    for column, kind in pii.items():
        if kind == "email":
            norm = normalise_email(column)
            valid = F.when(norm.isNotNull(), is_valid_email(norm))
            df = df.withColumns({f"{column}_hash": hmac_sha256(F.when(valid, norm), key), f"{column}_valid": valid})
        elif kind == "phone":
            e164 = phone_e164(F.col(column), F.lit(region))
            df = df.withColumns(
                {
                    f"{column}_hash": hmac_sha256(e164, key),
                    f"{column}_valid": F.when(clean_text(column).isNotNull(), e164.isNotNull()),
                }
            )
    if CORRUPT in df.columns:
        df = df.withColumn(
            CORRUPT, F.when(F.col(CORRUPT).isNotNull(), F.concat(F.lit("hmac:"), hmac_sha256(F.col(CORRUPT), key)))
        )
    return df.drop(*pii)


def contact_records(df: DataFrame, pii: dict[str, str], customer_ref: str, updated_at: str, region: str) -> DataFrame:
    """The raw contact details of a customer feed (first_name, last_name, email, phone), latest per customer.

    ``customer_ref`` and ``updated_at`` are Spark SQL expressions over the feed's columns.
    """
    by_kind = {kind: column for column, kind in pii.items()}

    def pick(kind: str, transform: Callable[[str], Column]) -> Column:
        return transform(by_kind[kind]) if kind in by_kind else F.lit(None).cast("string")

    email = pick("email", normalise_email)
    records = df.where(F.col(CORRUPT).isNull() if CORRUPT in df.columns else F.lit(True)).select(
        customer_id_from_crm(F.trim(F.expr(customer_ref))).alias("customer_id"),
        pick("first_name", clean_text).alias("first_name"),
        pick("last_name", clean_text).alias("last_name"),
        F.when(is_valid_email(email), email).alias("email"),
        pick("phone", lambda c: phone_e164(F.col(c), F.lit(region))).alias("phone"),
        F.expr(updated_at).cast("timestamp").alias("updated_at"),
    )
    latest = F.row_number().over(Window.partitionBy("customer_id").orderBy(F.col("updated_at").desc_nulls_last()))
    return records.where(F.col("customer_id").isNotNull()).withColumn("_n", latest).where("_n = 1").drop("_n")
