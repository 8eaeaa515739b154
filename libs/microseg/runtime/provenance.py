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
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(cfg: Config) -> str:
    payload = json.dumps(cfg.model_dump(mode="json", exclude={"conf_dir"}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def input_versions(spark: SparkSession, cfg: Config, inputs: list[Table]) -> dict[str, str]:
    """Tags naming the Delta version of each input table, so a run can be reproduced."""
    return {f"input_version.{table.name}": str(tables.version(spark, cfg, table)) for table in inputs}
