"""Source mappings (conf/sources/<mapping>.yaml) and the readers that turn them into DataFrames."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from microseg.config import Config
from microseg.errors import ConfigError

CORRUPT = "_corrupt_record"
ENTITIES = (
    "customers",
    "orders",
    "order_items",
    "web_events",
    "email_events",
    "support_tickets",
    "survey_responses",
)


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    entity: Literal[ENTITIES]  # type: ignore[valid-type]
    format: Literal["csv", "json", "parquet"]
    path: str
    schema_ddl: str = Field(alias="schema")
    options: dict[str, str] = Field(default_factory=dict)

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
        mapping = SourceMapping.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"source mapping {path} is invalid: {problems}") from None
    return {name: spec.model_copy(update={"name": name}) for name, spec in mapping.sources.items()}


def schema_of(spec: SourceSpec) -> StructType:
    try:
        return StructType.fromDDL(spec.schema_ddl)
    except Exception as exc:
        raise ConfigError(f"source {spec.name}: schema is not valid DDL ({exc}); fix it in conf/sources") from None


def read_source(spark: SparkSession, cfg: Config, spec: SourceSpec) -> DataFrame:
    """Read one source with its explicit schema; unparseable lines land in ``_corrupt_record``."""
    location = spec.path if "://" in spec.path else str(Path(cfg.path(cfg.sources.root), spec.path))
    schema = schema_of(spec)
    reader = spark.read.options(**spec.options)
    if spec.captures_corrupt_records:
        schema = schema.add(CORRUPT, "string")
        reader = reader.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
    folder, _, pattern = location.rpartition("/")
    if any(ch in pattern for ch in "*?[{") and not any(ch in folder for ch in "*?[{"):
        # A glob on file names only: read the folder with a filter, which also spares Spark a
        # noisy failed lookup of a streaming metadata folder named like the glob.
        reader, location = reader.option("pathGlobFilter", pattern), folder
    df = reader.schema(schema).format(spec.format).load(location)
    if not spec.captures_corrupt_records:
        df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
    return df.withColumn("_source_file", F.col("_metadata.file_path"))
