"""Standardisation of text, emails, phones, countries and amounts, as pure column/DataFrame transforms.

Emails are NFKC-normalised, trimmed and lower-cased, then validated; phones go to E.164 with the
phonenumbers library (a vectorised pandas UDF, as no Spark built-in parses phone numbers);
countries go to ISO 3166-1 alpha-2 codes with pycountry plus the aliases in config, looked up
once per distinct value on the driver and joined back (a handful of values, not a UDF per row).
"""

from __future__ import annotations

import unicodedata

import pandas as pd
import phonenumbers
import pycountry
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import StringType

EMAIL_PATTERN = r"^[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}$"


@pandas_udf(StringType())
def nfkc(values: pd.Series) -> pd.Series:
    """Unicode NFKC normal form (full-width letters, ligatures and composed accents made canonical)."""
    return values.map(lambda v: unicodedata.normalize("NFKC", v) if isinstance(v, str) else v)


def clean_text(column: str | Column) -> Column:
    """NFKC, inner white space collapsed, trimmed; empty becomes null."""
    col = F.col(column) if isinstance(column, str) else column
    text = F.trim(F.regexp_replace(nfkc(col), r"\s+", " "))
    return F.when(text != "", text)


def clean_code(column: str | Column) -> Column:
    """Codes and keys (channel, event type, ids): white space collapsed and trimmed, empty -> null.

    No Unicode normalisation: it costs a Python UDF per row and codes come from systems, not people.
    """
    col = F.col(column) if isinstance(column, str) else column
    text = F.trim(F.regexp_replace(col, r"\s+", " "))
    return F.when(text != "", text)


def normalise_email(column: str | Column) -> Column:
    col = F.col(column) if isinstance(column, str) else column
    return F.lower(clean_text(col))


def is_valid_email(normalised: Column) -> Column:
    return F.coalesce(normalised.rlike(EMAIL_PATTERN), F.lit(False))


@pandas_udf(StringType())
def phone_e164(numbers: pd.Series, regions: pd.Series) -> pd.Series:
    """E.164 form of each phone, read in its country (ISO alpha-2) when it has no +prefix; null if invalid."""

    def one(number: object, region: object) -> str | None:
        if not isinstance(number, str) or not number.strip():
            return None
        try:
            parsed = phonenumbers.parse(number, region if isinstance(region, str) else None)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(parsed):
            return None
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)

    return pd.Series([one(n, r) for n, r in zip(numbers, regions, strict=True)], dtype=object)


def country_code(name: str | None, aliases: dict[str, str | None]) -> str | None:
    """ISO 3166-1 alpha-2 code of a country name or code; aliases (upper-case keys) win; None if unknown."""
    if name is None or not name.strip():
        return None
    key = " ".join(name.split()).upper()
    if key in aliases:
        return aliases[key]
    try:
        return pycountry.countries.lookup(key).alpha_2
    except LookupError:
        return None


def with_country_code(df: DataFrame, column: str, output: str, aliases: dict[str, str | None]) -> DataFrame:
    """Add ``output``: the ISO code of ``column``, from one lookup per distinct value."""
    spark = df.sparkSession
    upper_aliases = {k.upper(): v for k, v in aliases.items()}
    distinct = [r[0] for r in df.select(column).distinct().collect()]
    pairs = [(value, country_code(value, upper_aliases)) for value in distinct if value is not None]
    lookup = spark.createDataFrame(pairs, f"`{column}` STRING, `{output}` STRING")
    return df.join(F.broadcast(lookup), on=column, how="left")


def rate_column(currency: Column, rates: dict[str, float]) -> Column:
    """Units of base currency per unit of ``currency`` (null for a currency without a rate)."""
    mapping = F.create_map(*[F.lit(x) for pair in rates.items() for x in pair])
    return F.element_at(mapping, F.upper(F.trim(currency)))
