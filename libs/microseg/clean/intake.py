"""Intake: the rules every mapped row must pass before its entity's own rules, the same for every source.

A row is quarantined, with the first rule it breaks, when its line could not be parsed (``malformed_record``),
when its text did not decode in the source's encoding (``undecodable_text``, naming the columns), when a column
its entity needs a value in (``ENTITIES[...].values``: ids, event time, amounts, quantities) is empty
(``missing_<column>``) or could not be read from the source's value (``unparseable_<column>``, the reason
quoting that value), or when an event time is before ``sources.earliest_event`` (``implausible_timestamp``). So
silver never takes a null where a value is required. The source values come from ``canonical``, which keeps them
as ``_raw_<column>`` before any parsing the mapping does; intake drops them.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from microseg.ingest.mapping import ENTITIES, RAW_PREFIX
from microseg.quality.rules import Rule, before, flag_rules, malformed, undecodable


def intake_rules(df: DataFrame, entity: str, earliest: dt.date) -> list[Rule]:
    """The intake rules of ``entity``'s mapped rows ``df``, in the order they apply."""
    types = dict(df.dtypes)
    rules = [malformed(), undecodable(df)]
    for column in ENTITIES[entity].values:
        value, raw = F.col(column), F.col(f"{RAW_PREFIX}{column}")
        empty = value.isNull() | (F.trim(value) == "") if types[column] == "string" else value.isNull()
        unread = F.concat(F.lit(f"{column} could not be read from "), raw)
        rules += [
            Rule(f"missing_{column}", f"{column} is empty", empty & raw.isNull()),
            Rule(f"unparseable_{column}", unread, empty & raw.isNotNull()),
        ]
    return rules + [before(column, earliest) for column in ENTITIES[entity].time_columns]


def intake(df: DataFrame, entity: str, earliest: dt.date) -> DataFrame:
    """``df`` (from ``canonical``) flagged by the intake rules (``_rule``, ``_reason``), without ``_raw_*``."""
    flagged = flag_rules(df, intake_rules(df, entity, earliest))
    return flagged.drop(*[c for c in df.columns if c.startswith(RAW_PREFIX)])
