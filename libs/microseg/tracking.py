"""MLflow set-up: tracking and registry URIs, the experiment and its artifact location, run tags."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from microseg import logs, tables
from microseg.config import Config


def configure(cfg: Config) -> str:
    """Point MLflow at the configured tracking/registry URIs; return the experiment id (created if new)."""
    logs.quiet_mlflow_prints()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow.registry_uri or cfg.tracking_uri)
    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        experiment_id = mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client(cfg: Config) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.mlflow.registry_uri or cfg.tracking_uri)


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


def input_versions(spark: SparkSession, cfg: Config, names: list[str]) -> dict[str, str]:
    """Tags naming the Delta version of each input table, so a run can be reproduced."""
    return {f"input_version.{name}": str(tables.version(spark, cfg, name)) for name in names}
