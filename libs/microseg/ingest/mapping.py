"""The source mapping: each entity's canonical columns, the mapping file's model and its validation."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
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
    types), and the timestamps converted to UTC."""

    required: tuple[str, ...]
    optional: dict[str, str] = field(default_factory=dict)
    time_columns: tuple[str, ...] = ()


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
    ),
    "order_lines": Entity(
        ("order_id", "customer_ref", "order_ts", "product_id", "quantity", "unit_price", "currency"),
        {"description": "string", "country": "string", "channel": "string", "consent_profiling": "boolean"},
        ("order_ts",),
    ),
    "orders": Entity(
        ("order_id", "customer_ref", "order_ts", "currency", "amount"),
        {"discount": "double", "channel": "string", "is_return": "boolean", "offer_code": "string"},
        ("order_ts",),
    ),
    "order_items": Entity(
        ("order_id", "line_no", "product_id", "quantity", "unit_price"),
        {"category": "string", "description": "string"},
    ),
    "web_events": Entity(
        ("event_id", "event_ts", "event_type"),
        {"anonymous_id": "string", "customer_ref": "string", "session_id": "string", "channel": "string"},
        ("event_ts",),
    ),
    "email_events": Entity(
        ("event_id", "email_hash", "event_type", "event_ts"), {"campaign_id": "string"}, ("event_ts",)
    ),
    "support_tickets": Entity(
        ("ticket_id", "customer_ref", "created_at"),
        {"channel": "string", "topic": "string", "satisfaction": "int"},
        ("created_at",),
    ),
    "survey_responses": Entity(("response_id", "customer_ref", "submitted_at"), {"nps": "int"}, ("submitted_at",)),
}


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
        try:
            bronze.select(F.expr(expression)).schema  # noqa: B018 - analyses the expression now
        except AnalysisException as exc:
            raise ConfigError(
                f"source mapping {mapping_file}: source {spec.name}, column {column}: expression {expression!r} "
                f"does not fit the source's schema ({exc.getMessage().splitlines()[0]})"
            ) from None
        mapped[column] = F.expr(expression)
    missing_columns = [c for c in ENTITIES[spec.entity].required if c not in mapped]
    if missing_columns:
        raise ConfigError(
            f"source mapping {mapping_file}: source {spec.name} (entity {spec.entity}) has no column(s) "
            f"{missing_columns}; add them to its schema or map them under columns:"
        )
    for column, kind in ENTITIES[spec.entity].optional.items():
        mapped.setdefault(column, F.lit(None).cast(kind))
    if spec.timezone:
        for column in ENTITIES[spec.entity].time_columns:
            mapped[column] = F.to_utc_timestamp(mapped[column], spec.timezone)
    return bronze.select(*[expr.alias(name) for name, expr in mapped.items()], *metadata)


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
