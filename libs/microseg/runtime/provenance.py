"""Provenance of a run: the code's commit, the configuration's hash, the input tables' versions.

Also the fingerprints a stage compares to tell whether its inputs changed since it last ran (issue 14
item 6): a digest of the config sections it reads (``digest``), of the code (``code_version``), of a
Delta table's state (``table_state``) and of a DataFrame's rows (``rows_fingerprint``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

from pydantic import BaseModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

from microseg.runtime import delta_ops, tables
from microseg.runtime.config import Config
from microseg.runtime.lake import Table


def git_commit() -> str:
    """The code's commit: git's in a source checkout, else the one stamped into the package when it was built.

    An installed wheel has no git; its ``microseg/_version.py`` holds the abbreviated commit it was built
    from. "unknown" only for a tree neither in git nor built.
    """
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=checkout)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return stamped_commit() or "unknown"


def stamped_commit() -> str | None:
    """The commit setuptools-scm stamped at build time (``g<sha>`` in its file, returned without the g)."""
    try:
        from microseg import _version
    except ImportError:
        return None
    node = getattr(_version, "commit", "") or ""
    return node.removeprefix("g") if node and node != "None" else None


def config_hash(cfg: Config) -> str:
    payload = json.dumps(cfg.model_dump(mode="json", exclude={"conf_dir"}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def input_versions(spark: SparkSession, cfg: Config, inputs: list[Table]) -> dict[str, str]:
    """Tags naming the Delta version of each input table, so a run can be reproduced."""
    return {f"input_version.{table.name}": str(tables.version(spark, cfg, table)) for table in inputs}


def digest(value: object) -> str:
    """sha256 (16 hex digits) of a JSON-able value, pydantic models (config sections, the catalog) included."""

    def plain(v: object) -> object:
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json")
        raise TypeError(f"cannot digest {type(v).__name__}")

    payload = json.dumps(value, sort_keys=True, default=plain)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Libraries whose upgrade can change what a stage computes from the same rows (MLlib, scikit-learn's sweep).
_LIBRARIES = ("pyspark", "delta-spark", "scikit-learn", "numpy")


@functools.cache
def code_version() -> str:
    """A digest of the code a stage runs: every file of the installed microseg package, and the versions of
    the libraries that compute with it.

    Not the git commit: a commit that changes only docs or tests would force a recompute, and an edited
    but uncommitted file (a data scientist trying a feature) would not; a wheel and a checkout of the same
    code give the same digest. ``_version.py`` is left out: the build stamps its commit there. Read once per
    process.
    """
    package = Path(__file__).resolve().parents[1]
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != "_version.py"]
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for name in _LIBRARIES:
        try:
            h.update(f"{name}=={importlib.metadata.version(name)}\0".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{name} absent\0".encode())
    return h.hexdigest()[:16]


def table_state(spark: SparkSession, cfg: Config, table: Table) -> str | None:
    """The table's latest Delta commit as ``v<version> <table id>`` (None: no such table).

    The id (DESCRIBE DETAIL's, made when the table is created) tells a table dropped and written again,
    whose versions start over, from the one it replaced. Not the commit's timestamp: Delta takes it from
    the commit file's modification time, which a copy of the lake changes. One small Spark job.
    """
    path = tables.table_path(cfg, table)
    if not delta_ops.is_delta_table(spark, path):
        return None
    return f"v{delta_ops.latest_version(spark, path)} {delta_ops.detail(spark, path)['id']}"


def row_hash(df: DataFrame) -> Column:
    """A 64-bit hash of each row of ``df``, all its columns in order.

    Spark's hash functions skip null values, so each column goes in with its null flag: (a, null) and
    (null, a) hash apart. A map (which Spark does not hash) goes in as its entries, sorted.
    """
    parts = []
    for field in df.schema.fields:
        column = F.col(f"`{field.name}`")
        if isinstance(field.dataType, MapType):
            column = F.array_sort(F.map_entries(column))
        parts += [column.isNull(), column]
    return F.xxhash64(*parts)


def hash_sum(df: DataFrame) -> Column:
    """The sum of ``row_hash`` over rows, as an exact decimal (a sum of longs would overflow)."""
    return F.sum(row_hash(df).cast("decimal(20,0)"))


def fingerprint_text(rows: int, total: object) -> str:
    """``<rows>:<16 hex digits>``: a row count and a sum of row hashes (``hash_sum``) reduced to 64 bits."""
    return f"{rows}:{int(total or 0) % 2**64:016x}"


def rows_fingerprint(df: DataFrame) -> str:
    """A fingerprint of ``df``'s rows whatever their order or file layout (``fingerprint_text``); one Spark job.

    The same rows give the same fingerprint, also when they were written again; a changed, added or
    removed row changes it (up to a 64-bit hash collision).
    """
    row = df.agg(F.count(F.lit(1)).alias("rows"), hash_sum(df).alias("hash")).first()
    return fingerprint_text(row["rows"], row["hash"])
