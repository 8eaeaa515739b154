"""Files that are not Delta tables (the report, GX Data Docs, the datagen manifest, source listings), on any
file system a lake lives on: a local folder, ``s3a://``/``s3://``, ``abfss://``, ``gs://``, ``hdfs://``.

Everything here goes through fsspec with the backend of the URI's scheme (s3fs for S3, adlfs for Azure,
gcsfs for Google Cloud Storage, pyarrow for HDFS: install the one the lake needs). Its options come from the
Hadoop settings Spark itself uses for that store (``spark.settings``: ``spark.hadoop.fs.s3a.endpoint``,
``...access.key``, ``...secret.key``, ``...path.style.access``), so one set of keys configures both; with
none, each backend finds credentials its usual way (environment variables, instance profile, ...).
Local paths are written through the same calls.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from microseg.runtime.config import Config

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Hadoop's s3a settings and the s3fs option each sets.
_S3A = "spark.hadoop.fs.s3a."


def scheme(uri: str) -> str:
    """The URI's scheme ("file" for a local path)."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else "file"


def options(cfg: Config | None, uri: str) -> dict:
    """fsspec options for ``uri``'s store, from the Hadoop settings in ``spark.settings``."""
    if cfg is None or scheme(uri) not in ("s3", "s3a"):
        return {}
    settings = cfg.spark.settings
    found: dict = {}
    client: dict = {}
    if endpoint := settings.get(_S3A + "endpoint"):
        client["endpoint_url"] = endpoint if "://" in endpoint else f"https://{endpoint}"
    if region := settings.get(_S3A + "endpoint.region"):
        client["region_name"] = region
    if settings.get(_S3A + "access.key"):
        found["key"] = settings[_S3A + "access.key"]
        found["secret"] = settings.get(_S3A + "secret.key")
    if settings.get(_S3A + "path.style.access", "").lower() == "true":
        found["config_kwargs"] = {"s3": {"addressing_style": "path"}}
    if client:
        found["client_kwargs"] = client
    return found


def filesystem(cfg: Config | None, uri: str) -> tuple[AbstractFileSystem, str]:
    """The file system holding ``uri`` and the path within it."""
    import fsspec

    kind = scheme(uri)
    if kind == "file":
        # Absolute but not resolved: a symlinked folder keeps its name, as in Hadoop's listings.
        return fsspec.filesystem("file"), os.path.abspath(uri.removeprefix("file://").removeprefix("file:"))
    if kind == "s3a":  # Hadoop's name for S3; s3fs serves it as s3
        uri = "s3" + uri[3:]
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options(cfg, uri))
    except ImportError as exc:
        raise ImportError(
            f"reading or writing {uri} needs fsspec's backend for {kind}:// ({exc}); install it in microseg's "
            "environment (s3fs for S3, adlfs for Azure, gcsfs for Google Cloud Storage)"
        ) from exc
    return fs, path


def join(base: str, *parts: str) -> str:
    """``base`` (a URI or a path) with ``parts`` appended by '/'."""
    return posixpath.join(base.rstrip("/"), *parts)


def write_text(cfg: Config | None, uri: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``uri``, creating its folders; returns ``uri``."""
    fs, path = filesystem(cfg, uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w", encoding="utf-8") as out:
        out.write(text)
    return uri


def read_text(cfg: Config | None, uri: str) -> str | None:
    """The text (UTF-8) of the file at ``uri``, or None if there is none."""
    fs, path = filesystem(cfg, uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "r", encoding="utf-8") as handle:
        return handle.read()


def move_files(cfg: Config | None, source: str, target: str, prefix: str) -> list[str]:
    """Move the files directly in folder ``source`` (names starting with _ or . left out: markers, checksums)
    into folder ``target``, named ``<prefix><n><extension>`` (n = 00, 01, ... in name order; the extension is
    all from the name's first dot). Returns the new files' URIs.

    Raises:
        FileExistsError: a file of that name is already in ``target`` (nothing is moved).
    """
    fs, src = filesystem(cfg, source)
    _, dst = filesystem(cfg, target)
    names = sorted(
        posixpath.basename(e["name"])
        for e in fs.ls(src, detail=True)
        if e["type"] == "file" and not posixpath.basename(e["name"]).startswith(("_", "."))
    )
    extension = [n[n.find(".") :] if "." in n else "" for n in names]  # part-0-c000.snappy.parquet: .snappy.parquet
    moves = [
        (posixpath.join(src, n), posixpath.join(dst, f"{prefix}{i:02d}{extension[i]}")) for i, n in enumerate(names)
    ]
    taken = [new for _, new in moves if fs.exists(new)]
    if taken:
        raise FileExistsError(f"{len(taken)} file(s) to be written are already in {target}, e.g. {taken[0]}")
    fs.makedirs(dst, exist_ok=True)
    for old, new in moves:
        fs.mv(old, new)
    return [join(target, posixpath.basename(new)) for _, new in moves]


def remove(cfg: Config | None, uri: str) -> None:
    """Remove the file or folder (with what it holds) ``uri``, if it exists."""
    fs, path = filesystem(cfg, uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def put_folder(cfg: Config | None, local: str | Path, uri: str) -> str:
    """Copy the local folder ``local`` (its files, recursively) to ``uri``; returns ``uri``."""
    fs, path = filesystem(cfg, uri)
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        target = posixpath.join(path, file.relative_to(local).as_posix())
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(str(file), target)
    return uri


def folders(cfg: Config | None, uri: str) -> list[str]:
    """The names of the folders directly inside ``uri`` (none if it does not exist), sorted."""
    fs, path = filesystem(cfg, uri)
    if not fs.exists(path):
        return []
    entries = fs.ls(path, detail=True)
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")


def rename_suffix(cfg: Config | None, folder: str, old: str, new: str) -> None:
    """Rename the files in ``folder`` whose names end with ``old`` to end with ``new``."""
    fs, path = filesystem(cfg, folder)
    for name in fs.ls(path, detail=False):
        if name.endswith(old):
            fs.mv(name, name[: -len(old)] + new)


@dataclass(frozen=True)
class FileInfo:
    path: str  # a URI as Spark names it: file:/abs/path for a local file, s3a://bucket/key, ...
    size: int
    modified_ms: int


def list_files(cfg: Config | None, pattern: str) -> list[FileInfo]:
    """The files matching a path, folder or glob (names starting with _ or . left out), sorted by URI.

    A folder matched stands for the files directly in it. URIs keep the pattern's scheme (``file:`` for local
    paths, as Hadoop writes them), so a file is named the same way by every run and by Spark's readers.
    """
    fs, path = filesystem(cfg, pattern)
    kind = scheme(pattern)
    files = []
    for name, info in sorted(fs.glob(path, detail=True).items()):
        inside = fs.ls(name, detail=True) if info["type"] == "directory" else [info]
        files += [f for f in inside if f["type"] == "file" and not posixpath.basename(f["name"]).startswith(("_", "."))]
    found = {FileInfo(_uri(kind, f["name"]), int(f["size"]), _modified_ms(kind, f)) for f in files}
    return sorted(found, key=lambda f: f.path)


def content_hash(cfg: Config | None, uri: str) -> str:
    """The SHA-256 of a file's bytes (hex), read in 8 MiB chunks: the same content under any name or time."""
    fs, path = filesystem(cfg, uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _uri(kind: str, path: str) -> str:
    return f"file:{path}" if kind == "file" else f"{kind}://{path}"


def _modified_ms(kind: str, info: dict) -> int:
    """A listing entry's modification time in epoch milliseconds (each backend names it its own way)."""
    if kind == "file":  # whole milliseconds as Hadoop reports them, not a rounded float
        return os.stat(info["name"]).st_mtime_ns // 1_000_000
    value = info.get("mtime", info.get("LastModified", info.get("last_modified", 0)))
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    return int(float(value or 0) * 1000)
