"""Standardisation of text, emails, phones, countries and amounts, as pure column/DataFrame transforms.

Emails are NFKC-normalised (``with_nfkc``: once per distinct address, joined back, as the Unicode
normal form needs a Python UDF and an address recurs on every event of its owner), then trimmed,
lower-cased and validated with built-ins (``normalise_email``); phones go to E.164 with the
phonenumbers library (a vectorised pandas UDF, as no Spark built-in parses phone numbers);
countries go to ISO 3166-1 alpha-2 codes with pycountry plus the aliases in config, through a
literal map of every name and code pycountry knows (no UDF and no pass over the data).
"""

from __future__ import annotations

import json
import unicodedata

import pandas as pd
import phonenumbers
import pycountry
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from microseg.runtime.sparkops import pandas_udf

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


def with_nfkc(df: DataFrame, column: str) -> DataFrame:
    """``df`` with ``column`` in Unicode NFKC form, computed once per distinct value and joined back.

    The Python UDF then runs on as many values as there are distinct ones (one per email address,
    not one per email event). A value missing from the lookup (a source that changed between the two
    reads, such as a database table) keeps its original form rather than becoming null.
    """
    col = F.col(f"`{column}`")
    lookup = (
        df.select(col.alias("_nfkc_key"))
        .where(F.col("_nfkc_key").isNotNull())
        .distinct()
        .withColumn("_nfkc_value", nfkc(F.col("_nfkc_key")))
    )
    # A left join on a distinct key keeps every row of df exactly once.
    joined = df.join(lookup, col == F.col("_nfkc_key"), how="left")
    normalised = F.coalesce(F.col("_nfkc_value"), col).alias(column)
    return joined.select(*[normalised if c == column else F.col(f"`{c}`") for c in df.columns])


def normalise_email(column: str | Column) -> Column:
    """Trimmed and lower-cased, inner white space collapsed, empty -> null, with built-ins only.

    The address must already be in NFKC form: run ``with_nfkc`` on its DataFrame first (ingest does,
    before tokenising), so the Python UDF runs once per distinct address rather than once per row.
    """
    return F.lower(clean_code(column))


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


COUNTRY_FIELDS = ("alpha_2", "alpha_3", "numeric", "name", "official_name", "common_name", "flag")


def country_lookup(aliases: dict[str, str | None]) -> dict[str, str | None]:
    """Every name and code pycountry knows, and every alias, in ``country_code``'s key form -> its code."""
    upper_aliases = {k.upper(): v for k, v in aliases.items()}
    names = {getattr(c, field, None) for c in pycountry.countries for field in COUNTRY_FIELDS}
    keys = {" ".join(n.split()).upper() for n in names if n}
    return {key: country_code(key, upper_aliases) for key in keys | set(upper_aliases)}


def with_country_code(df: DataFrame, column: str, output: str, aliases: dict[str, str | None]) -> DataFrame:
    """Add ``output``: the ISO code of ``column``, from a literal map of every name ``country_code`` knows.

    The same answers as ``country_code`` per row, with no pass over the data to collect its values
    and no Python UDF: the map (about 1,500 keys) is a constant in the plan.
    """
    lookup = F.from_json(F.lit(json.dumps(country_lookup(aliases))), "map<string,string>")
    return df.withColumn(output, F.element_at(lookup, F.upper(clean_code(column))))


def rate_column(currency: Column, rates: dict[str, float]) -> Column:
    """Units of base currency per unit of ``currency`` (null for a currency without a rate)."""
    mapping = F.create_map(*[F.lit(x) for pair in rates.items() for x in pair])
    return F.element_at(mapping, F.upper(F.trim(currency)))
