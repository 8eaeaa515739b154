"""Provenance of a run: the code's commit, the configuration's hash, the input tables' versions."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from pyspark.sql import SparkSession

from microseg.runtime import tables
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
