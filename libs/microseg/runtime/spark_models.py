"""Spark ML models in MLflow (the spark flavor), logged and loaded alike under classic Spark and Spark Connect.

Spark Connect gap: ``mlflow.spark.log_model`` and ``load_model`` copy a PipelineModel between Spark's
file system and the local disk through the driver's JVM (``SparkContext._gateway``), which a Spark
Connect client does not have (AttributeError: 'NoneType' object has no attribute 'jvm'). Under
Connect the server writes and reads the model in a staging folder of the lake
(``<lake.root>/_tmp/models``), and this process copies it to or from the MLflow model folder
(runtime/storage.py: a local lake, or any store fsspec reaches). The logged model is the same spark-flavor
model ``mlflow.spark.log_model`` makes (``sparkml/`` beside MLmodel): ``mlflow.spark.load_model``
loads it in a classic session, and the registry takes it as any other.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from types import SimpleNamespace

import mlflow
import mlflow.spark
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from microseg.runtime import sparkops, storage
from microseg.runtime.config import Config

SPARKML = "sparkml"  # the flavor's model data folder (mlflow.spark's _SPARK_MODEL_PATH_SUB)


def staging_dir(cfg: Config) -> str:
    """Where a Spark Connect server writes and reads models on their way to and from MLflow."""
    return f"{cfg.lake_root}/_tmp/models"


def _remote() -> bool:
    """Whether the active Spark session, whose models these are, is a Spark Connect one."""
    active = SparkSession.getActiveSession()
    return active is not None and sparkops.is_remote(active)


def log_spark_model(
    cfg: Config,
    model: PipelineModel,
    artifact_path: str,
    pip_requirements: list[str] | None = None,
    signature: ModelSignature | None = None,
) -> ModelInfo:
    """Log ``model`` to the active MLflow run as a spark-flavor model at ``artifact_path``.

    Classic Spark: ``mlflow.spark.log_model``. Spark Connect (the gap in the module docstring): the
    server saves the model under ``staging_dir``, which is copied into the MLflow model folder and removed.
    """
    if not _remote():
        return mlflow.spark.log_model(
            model, artifact_path=artifact_path, pip_requirements=pip_requirements, signature=signature
        )
    flavor = SimpleNamespace(__name__="mlflow.spark", save_model=_save_through_lake)
    return Model._log_v2(
        artifact_path=artifact_path,
        flavor=flavor,
        spark_model=model,
        staging=staging_dir(cfg),
        store=cfg,
        pip_requirements=pip_requirements,
        signature=signature,
    )


def _save_through_lake(
    spark_model: PipelineModel,
    path: str,
    mlflow_model: Model,
    staging: str,
    store: Config,
    signature: ModelSignature | None = None,
    pip_requirements: list[str] | None = None,
    **_: object,
) -> None:
    """Save a spark-flavor model folder at ``path`` (local) from a model on a Spark Connect server."""
    staged = f"{staging}/{uuid.uuid4().hex}"
    spark_model.write().overwrite().save(staged)
    fs, staged_path = storage.filesystem(store, staged)
    try:
        os.makedirs(path, exist_ok=True)
        fs.get(staged_path.rstrip("/") + "/", os.path.join(path, SPARKML), recursive=True)
    finally:
        fs.rm(staged_path, recursive=True)
    # The metadata the spark flavor writes beside sparkml/ (MLmodel, requirements, environments).
    mlflow.spark._save_model_metadata(
        dst_dir=path,
        spark_model=spark_model,
        mlflow_model=mlflow_model,
        conda_env=None,
        code_paths=None,
        signature=signature,
        pip_requirements=pip_requirements,
    )


def load_spark_model(cfg: Config, model_uri: str) -> PipelineModel:
    """The spark-flavor model at ``model_uri`` (runs:/..., models:/name@alias...).

    Classic Spark: ``mlflow.spark.load_model``. Spark Connect (the gap in the module docstring): the
    model's ``sparkml`` folder is copied to ``staging_dir``, named by its contents, and the server loads
    it from there. The copy stays (a model's parts may be read after loading; the same model is copied
    once).
    """
    if not _remote():
        return mlflow.spark.load_model(model_uri)
    with tempfile.TemporaryDirectory() as local:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=local)
        data = os.path.join(folder, Model.load(folder).flavors["spark"]["model_data"])
        staged = f"{staging_dir(cfg)}/loaded-{_digest(data)}"
        fs, staged_path = storage.filesystem(cfg, staged)
        if not fs.exists(staged_path):
            partial = f"{staged_path}.{uuid.uuid4().hex}.partial"
            fs.put(data.rstrip("/") + "/", partial, recursive=True)
            fs.mv(partial, staged_path, recursive=True)
    return PipelineModel.load(staged)


def _digest(folder: str) -> str:
    """A hash of the files under ``folder`` (names and contents)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            file = os.path.join(root, name)
            digest.update(os.path.relpath(file, folder).encode())
            with open(file, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:20]
