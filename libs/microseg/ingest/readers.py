"""Readers: a mapped source's files (csv, json, parquet) or database table (JDBC) as a DataFrame."""

from __future__ import annotations

import posixpath
import zlib

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from microseg.ingest.mapping import SourceSpec, check_columns, schema_of
from microseg.runtime import storage
from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError, SchemaDriftError, SourceMissingError, UnreadableFileError
from microseg.runtime.lake import CORRUPT
from microseg.runtime.storage import FileInfo

HEAD_BYTES = 64 * 1024  # enough for a header line and the first rows
# Magic numbers of compressed files -> (format, the extension under which Spark decompresses them; None: it cannot).
COMPRESSED = {b"\x1f\x8b": ("gzip", ".gz"), b"BZh": ("bzip2", ".bz2"), b"PK\x03\x04": ("zip", None)}
DELIMITERS = {";": ";", "|": "|", "\t": "\\t"}  # other field separators -> how options.sep spells them


def location(cfg: Config, spec: SourceSpec) -> str:
    """Where a source's files are: its path, under ``sources.root`` unless it is a URI itself."""
    return spec.path if "://" in spec.path else storage.join(cfg.path(cfg.sources.root), spec.path)


def check_files(cfg: Config, spec: SourceSpec, files: list[FileInfo]) -> None:
    """Look at the first bytes of each text file for what Spark would read silently as garbage.

    Raises:
        UnreadableFileError: naming every such file, what it holds and what to change.
    """
    if spec.format not in ("csv", "json"):
        return
    problems = [p for f in files if (p := unreadable(spec, f.path, _head(cfg, f.path)))]
    if problems:
        raise UnreadableFileError(
            f"source {spec.name}: {len(problems)} file(s) cannot be read with the mapping; nothing was ingested:\n"
            + "\n".join(f"  {p}" for p in problems)
        )


def _head(cfg: Config, uri: str) -> bytes:
    fs, path = storage.filesystem(cfg, uri)
    with fs.open(path, "rb") as handle:
        return handle.read(HEAD_BYTES)


def unreadable(spec: SourceSpec, path: str, head: bytes) -> str | None:
    """Why the file at ``path``, starting with ``head``, cannot be read with ``spec``; None if nothing shows."""
    for magic, (kind, extension) in COMPRESSED.items():
        if not head.startswith(magic):
            continue
        if extension is None:
            return f"{path} is a {kind} archive; Spark cannot read it: extract its files into the source's folder"
        if not path.endswith(extension):
            return (
                f"{path} holds {kind}-compressed bytes but its name does not end in {extension}; rename it "
                f"{posixpath.basename(path)}{extension} (Spark decompresses {extension} files by their name)"
            )
        if kind != "gzip":
            return None
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        except zlib.error:
            return f"{path} is named {extension} but its gzip data is damaged; deliver the file again"
    return _other_delimiter(spec, path, head) if spec.format == "csv" else None


def _other_delimiter(spec: SourceSpec, path: str, head: bytes) -> str | None:
    """A CSV whose first line has none of the mapping's separator but another one: the whole line is one column."""
    sep = spec.options.get("sep", spec.options.get("delimiter", ","))
    line = head.split(b"\n", 1)[0].decode(spec.encoding, errors="replace").rstrip("\r")
    if sep in line or len(schema_of(spec).fields) < 2:
        return None
    for found, spelt in DELIMITERS.items():
        if found in line:
            return (
                f"{path} reads as a single column: its first line {line[:80]!r} holds no {sep!r} but {found!r}; "
                f'set options: {{sep: "{spelt}"}} on source {spec.name} in the mapping'
            )
    return None


def _file_columns(spark: SparkSession, spec: SourceSpec, paths: list[str]) -> list[str] | None:
    """Columns present in the files (CSV header, Parquet footer); None where the format cannot tell cheaply."""
    if spec.format == "csv" and spec.options.get("header", "false").lower() == "true":
        reader = spark.read.options(**spec.options).option("encoding", spec.encoding)
        return reader.option("inferSchema", "false").csv(paths).columns
    if spec.format == "parquet":
        return spark.read.parquet(*paths).columns
    return None


def read_files(spark: SparkSession, spec: SourceSpec, paths: list[str]) -> tuple[DataFrame, list[str]]:
    """Read the given files with the declared schema; unparseable lines land in ``_corrupt_record``.

    Returns the DataFrame (declared columns, ``_corrupt_record``, ``_source_file``) and the names of
    columns the files have beyond the schema (schema drift that is recorded, not fatal).
    """
    declared = schema_of(spec)
    found = _file_columns(spark, spec, paths)
    extra = check_columns(spec, found) if found is not None else []
    schema = declared
    if spec.format == "csv" and found is not None:
        # CSV columns are matched by position: read in the file's order, extras as strings.
        types = {f.name: f.dataType for f in declared.fields}
        schema = StructType([StructField(c, types.get(c, StringType())) for c in found])
    reader = spark.read.options(**spec.options)
    if spec.captures_corrupt_records:
        reader = reader.option("encoding", spec.encoding)
        schema = StructType([*schema.fields, StructField(CORRUPT, StringType())])
        reader = reader.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
    df = reader.schema(schema).format(spec.format).load(paths)
    if not spec.captures_corrupt_records:
        df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
    for name in declared.fieldNames():
        if name not in df.columns:
            df = df.withColumn(name, F.lit(None).cast(declared[name].dataType))
    columns = [*declared.fieldNames(), CORRUPT]
    return df.select(*columns, F.col("_metadata.file_path").alias("_source_file")), extra


def read_jdbc(spark: SparkSession, spec: SourceSpec) -> DataFrame:
    """A full snapshot of a database table (options: url, dbtable or query, user, password, driver)."""
    if "url" not in spec.options:
        raise ConfigError(f"source {spec.name}: a jdbc source needs options.url (and dbtable or query)")
    declared = schema_of(spec)
    df = spark.read.format("jdbc").options(**spec.options).load()
    missing = [c for c in declared.fieldNames() if c not in df.columns and c not in spec.optional_columns]
    if missing:
        raise SchemaDriftError(f"source {spec.name}: column(s) {missing} missing from {spec.options.get('dbtable')}")
    where = f"{spec.options['url'].split('?')[0]}#{spec.options.get('dbtable', 'query')}"
    return df.select(
        *[
            (F.col(f.name).cast(f.dataType) if f.name in df.columns else F.lit(None).cast(f.dataType)).alias(f.name)
            for f in declared.fields
        ],
        F.lit(None).cast("string").alias(CORRUPT),
        F.lit(where).alias("_source_file"),
    )


def read_source(spark: SparkSession, cfg: Config, spec: SourceSpec) -> DataFrame:
    """Every file of a source (see read_files)."""
    files = storage.list_files(cfg, location(cfg, spec))
    if not files:
        raise SourceMissingError(f"source {spec.name}: no files match {location(cfg, spec)}; check sources.root")
    return read_files(spark, spec, [f.path for f in files])[0]
