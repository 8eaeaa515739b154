"""The source mapping: each entity's canonical columns, the mapping file's model and its validation."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from microseg.ingest.privacy import tokenise
from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError, SchemaDriftError
from microseg.runtime.lake import CORRUPT
from microseg.runtime.loader import interpolate


@dataclass(frozen=True)
class Entity:
    """A canonical entity a source maps onto: the columns it must have, those it may have (with their
    types), the timestamps converted to UTC, the columns every row needs a value in (its ids, event time,
    amounts and quantities: a row without one is quarantined, clean.intake), and whether the mapping can
    say which rows are returns (``returns_when``, giving ``is_return``)."""

    required: tuple[str, ...]
    optional: dict[str, str] = field(default_factory=dict)
    time_columns: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    returns: bool = False


# Every entity, declared once, in the order clean takes them: later ones link to the customers and
# orders of earlier ones. Emails and phones arrive hashed from ingest (privacy.tokenise); names never
# leave the contact table. A new entity: its entry here, its cleaner (clean/stage.py CLEANERS), its
# quality rules (conf/quality), its silver table (runtime/lake.py) and its generator (synthetic).
ENTITIES: dict[str, Entity] = {
    "customers": Entity(
        ("customer_ref", "updated_at"),
        {
            "email_hash": "string",
            "email_valid": "boolean",
            "phone_hash": "string",
            "phone_valid": "boolean",
            "country": "string",
            "signup_date": "date",
            "consent_email": "boolean",
            "consent_sms": "boolean",
            "consent_profiling": "boolean",
        },
        ("updated_at",),
        ("customer_ref",),  # a CRM row without updated_at is kept: the latest-wins rules order it last
    ),
    "order_lines": Entity(
        ("order_id", "customer_ref", "order_ts", "product_id", "quantity", "unit_price", "currency"),
        {"description": "string", "country": "string", "channel": "string", "consent_profiling": "boolean"},
        ("order_ts",),
        # customer_ref has its own rule (no_customer_key, clean.orders): guest lines are usual in such logs
        ("order_id", "order_ts", "product_id", "quantity", "unit_price"),
        returns=True,
    ),
    "orders": Entity(
        ("order_id", "customer_ref", "order_ts", "currency", "amount"),
        {"discount": "double", "channel": "string", "offer_code": "string"},
        ("order_ts",),
        ("order_id", "customer_ref", "order_ts", "amount"),
        returns=True,
    ),
    "order_items": Entity(
        ("order_id", "line_no", "product_id", "quantity", "unit_price"),
        {"category": "string", "description": "string"},
        values=("order_id", "line_no", "quantity", "unit_price"),
    ),
    "web_events": Entity(
        ("event_id", "event_ts", "event_type"),
        {"anonymous_id": "string", "customer_ref": "string", "session_id": "string", "channel": "string"},
        ("event_ts",),
        ("event_id", "event_ts", "event_type"),
    ),
    "email_events": Entity(
        ("event_id", "email_hash", "event_type", "event_ts"),
        {"campaign_id": "string"},
        ("event_ts",),
        ("event_id", "event_type", "event_ts"),  # email_hash has its own rule (missing_email, clean.events)
    ),
    "support_tickets": Entity(
        ("ticket_id", "customer_ref", "created_at"),
        {"channel": "string", "topic": "string", "satisfaction": "int"},
        ("created_at",),
        ("ticket_id", "customer_ref", "created_at"),
    ),
    "survey_responses": Entity(
        ("response_id", "customer_ref", "submitted_at"),
        {"nps": "int"},
        ("submitted_at",),
        ("response_id", "customer_ref", "submitted_at"),
    ),
}

RAW_PREFIX = "_raw_"  # canonical() keeps the source value of each required column as _raw_<column>


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    entity: str = Field(description="the canonical entity the source maps onto (ingest/mapping.py ENTITIES)")
    format: Literal["csv", "json", "parquet", "jdbc"]
    path: str = Field("", description="file path or glob, relative to sources.root (files only)")
    schema_ddl: str = Field(alias="schema")
    options: dict[str, str] = Field(default_factory=dict)
    encoding: str = Field("UTF-8", description="csv/json: the files' character encoding, as Java names it")
    optional_columns: list[str] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list, description="columns that identify a record of the source")
    event_time: str | None = Field(None, description="the column that dates a record")
    columns: dict[str, str] = Field(
        default_factory=dict, description="canonical column -> Spark SQL expression over the source's columns"
    )
    timezone: str | None = Field(None, description="time zone of naive timestamps; they are converted to UTC")
    product_code_pattern: str | None = Field(None, description="regex of product codes; other codes are charges")
    pii: dict[str, Literal["email", "phone", "first_name", "last_name", "address"]] = Field(
        default_factory=dict, description="source column -> kind of direct identifier; hashed or dropped at ingest"
    )
    returns_when: str | None = Field(
        None,
        description="order_lines and orders: Spark SQL condition over the mapped row (canonical columns and the "
        "source's other columns) that makes a row a return or cancellation; none: the feed has no returns",
    )
    max_rejected_share: float | None = Field(
        None, ge=0, le=1, description="this source's quality.max_rejected_share; none: the config's"
    )
    expected_rules: list[str] = Field(
        default_factory=list,
        description="clean rules whose rows this feed is known to carry (guest sales without a customer key): "
        "quarantined as usual, not counted in the batch's rejected share",
    )

    @field_validator("entity")
    @classmethod
    def _known_entity(cls, entity: str) -> str:
        if entity not in ENTITIES:
            raise ValueError(f"unknown entity {entity!r}; known entities: {', '.join(ENTITIES)}")
        return entity

    @model_validator(mode="before")
    @classmethod
    def _one_encoding(cls, data: Any) -> Any:
        """``options.encoding`` (or Spark's alias ``charset``) is the same setting: taken as ``encoding``."""
        options = (data.get("options") or {}) if isinstance(data, dict) else {}
        given = {str(options[k]) for k in ("encoding", "charset") if k in options}
        if not given:
            return data
        if len({g.upper() for g in given | ({str(data["encoding"])} if "encoding" in data else set())}) > 1:
            raise ValueError(f"encoding {data.get('encoding')!r} and options {options} disagree; keep encoding: only")
        return {**data, "encoding": given.pop()}

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}; for example UTF-8, ISO-8859-1, windows-1252") from None
        return encoding

    @model_validator(mode="after")
    def _returns_by_rule(self) -> SourceSpec:
        if self.returns_when and not ENTITIES[self.entity].returns:
            takes = [name for name, e in ENTITIES.items() if e.returns]
            raise ValueError(f"returns_when applies to entities {takes}, not to {self.entity}")
        if "is_return" in self.columns:
            raise ValueError("is_return is not a mapped column: say which rows are returns with returns_when")
        if self.entity == "order_lines" and not self.keys:
            raise ValueError(
                "an order_lines source declares no keys: name the source columns that identify a line, for example "
                "keys: [order_id, line_number] or [order_id, product_id] (a line delivered twice is then quarantined "
                "as duplicate_key, not counted twice)"
            )
        return self

    @property
    def captures_corrupt_records(self) -> bool:
        return self.format in ("csv", "json")


class SourceMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, SourceSpec]


def load_mapping(cfg: Config) -> dict[str, SourceSpec]:
    """The sources of mapping ``cfg.sources.mapping``, validated; errors name the file and key."""
    path = cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml")
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"source mapping {path} does not exist; sources.mapping must be one of {available}")
    try:
        mapping = SourceMapping.model_validate(interpolate(yaml.safe_load(path.read_text()), str(path)))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"source mapping {path} is invalid: {problems}") from None
    return {name: spec.model_copy(update={"name": name}) for name, spec in mapping.sources.items()}


def schema_of(spec: SourceSpec) -> StructType:
    try:
        return StructType.fromDDL(spec.schema_ddl)
    except Exception as exc:
        raise ConfigError(f"source {spec.name}: schema is not valid DDL ({exc}); fix it in conf/sources") from None


def check_columns(spec: SourceSpec, found: list[str]) -> list[str]:
    """Compare the columns a file has with the declared schema: raise on a missing one, return extras."""
    declared = schema_of(spec).fieldNames()
    missing = [c for c in declared if c not in found and c not in spec.optional_columns]
    if missing:
        raise SchemaDriftError(
            f"source {spec.name}: required column(s) {missing} missing from its files (found {found}); "
            f"fix the feed or the mapping's schema in conf/sources"
        )
    return [c for c in found if c not in declared]


def canonical(bronze: DataFrame, spec: SourceSpec, mapping_file: str) -> DataFrame:
    """Map a source's columns onto its entity's canonical columns, with timestamps in UTC.

    Raises:
        ConfigError: naming the mapping file, source and column when an expression or a required
            canonical column is wrong.
    """
    metadata = [c for c in bronze.columns if c.startswith("_")]
    # Spark resolves names case-insensitively: a source column named like a canonical one gives way.
    canonical_names = {c.lower() for c in spec.columns}
    mapped = {c: F.col(f"`{c}`") for c in bronze.columns if not c.startswith("_") and c.lower() not in canonical_names}
    for column, expression in spec.columns.items():
        _analysed(bronze, expression, f"{mapping_file}: source {spec.name}, column {column}", "the source's schema")
        mapped[column] = F.expr(expression)
    missing_columns = [c for c in ENTITIES[spec.entity].required if c not in mapped]
    if missing_columns:
        raise ConfigError(
            f"source mapping {mapping_file}: source {spec.name} (entity {spec.entity}) has no column(s) "
            f"{missing_columns}; add them to its schema or map them under columns:"
        )
    entity = ENTITIES[spec.entity]
    for column, kind in entity.optional.items():
        mapped.setdefault(column, F.lit(None).cast(kind))
    if spec.timezone:
        for column in entity.time_columns:
            mapped[column] = F.to_utc_timestamp(mapped[column], spec.timezone)
    sources = [c for c in bronze.columns if not c.startswith("_")]
    raw = {
        f"{RAW_PREFIX}{column}": _raw_value(_references(spec.columns.get(column, f"`{column}`"), sources))
        for column in entity.values
    }
    raw_columns = [c.alias(name) for name, c in raw.items()]
    rows = bronze.select(*[expr.alias(name) for name, expr in mapped.items()], *metadata, *raw_columns)
    if not entity.returns:
        return rows
    # Evaluated over the mapped row, so the condition can name canonical columns (order_id LIKE 'C%').
    condition = spec.returns_when or "false"
    _analysed(rows, condition, f"{mapping_file}: source {spec.name}, returns_when", "the mapped row")
    return rows.withColumn("is_return", F.coalesce(F.expr(condition).cast("boolean"), F.lit(False)))


def _analysed(df: DataFrame, expression: str, where: str, against: str) -> None:
    """Analyse ``expression`` over ``df`` now (no Spark job).

    Raises:
        ConfigError: ``source mapping <where>: expression ... does not fit <against> (Spark's first line)``.
    """
    try:
        df.select(F.expr(expression)).schema  # noqa: B018 - analyses the expression now
    except AnalysisException as exc:
        raise ConfigError(
            f"source mapping {where}: expression {expression!r} does not fit {against} "
            f"({exc.getMessage().splitlines()[0]})"
        ) from None


def _references(expression: str, columns: list[str]) -> list[str]:
    """The source columns a mapping expression names (string literals skipped), in ``columns``' spelling."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", " ", expression)
    spelled = {c.lower(): c for c in columns}
    found = [quoted or bare for quoted, bare in re.findall(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)", text)]
    return list(dict.fromkeys(spelled[name.lower()] for name in found if name.lower() in spelled))


def _raw_value(references: list[str]) -> Column:
    """The source values behind a canonical column, as text (``InvoiceDate='31/13/2011'``); null if all empty."""
    if not references:
        return F.lit(None).cast("string")
    texts = {ref: F.col(f"`{ref}`").cast("string") for ref in references}
    present = [F.when(F.trim(text) != "", F.concat(F.lit(f"{ref}='"), text, F.lit("'"))) for ref, text in texts.items()]
    return F.when(F.coalesce(*present).isNotNull(), F.concat_ws(", ", *present))


def check_mapping(spark: SparkSession, cfg: Config) -> None:
    """Validate every source of the mapping against its own schema before anything is read.

    Raises:
        ConfigError: naming the mapping file, the source and the column at fault.
    """
    mapping_file = str(cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml"))
    for spec in load_mapping(cfg).values():
        schema = schema_of(spec)
        unknown = [c for c in [*spec.keys, *([spec.event_time] if spec.event_time else []), *spec.pii]
                   if c not in schema.fieldNames()]  # fmt: skip
        if unknown:
            raise ConfigError(
                f"source mapping {mapping_file}: source {spec.name} names column(s) {unknown} in keys, "
                f"event_time or pii that its schema does not have"
            )
        empty = spark.createDataFrame([], schema).withColumns(
            {
                CORRUPT: F.lit(None).cast("string"),
                "_source_file": F.lit(None).cast("string"),
                "_ingested_at": F.lit(None).cast("timestamp"),
            }
        )
        if spec.pii:
            empty = tokenise(empty, spec.pii, b"mapping-check-only", cfg.sources.default_phone_region)
        canonical(empty, spec, mapping_file)
