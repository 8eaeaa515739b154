"""Train stage: an MLlib clustering pipeline per layer, tracked and registered in MLflow."""

from __future__ import annotations

import mlflow
import mlflow.spark
from mlflow.models import infer_signature
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import Imputer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg import tables, tracking
from microseg.config import Config, TrainConfig
from microseg.runlog import Entry, RunContext, StageReport

CHAMPION = "champion"
PREVIOUS = "previous"


def model_name(layer: str, macro: str = "all") -> str:
    return f"microseg-{layer}-{macro}"


def clustering_pipeline(train: TrainConfig) -> Pipeline:
    """Imputer -> assembler -> scaler -> KMeans, so the fitted model scores raw feature rows."""
    imputed = [f"{c}__imputed" for c in train.features]
    return Pipeline(
        stages=[
            Imputer(inputCols=train.features, outputCols=imputed, strategy="median"),
            VectorAssembler(inputCols=imputed, outputCol="features_raw"),
            StandardScaler(inputCol="features_raw", outputCol="features_scaled", withMean=True, withStd=True),
            KMeans(
                k=train.k,
                seed=train.seed,
                maxIter=train.max_iter,
                featuresCol="features_scaled",
                predictionCol="cluster",
            ),
        ]
    )


def silhouette(predictions: DataFrame, sample: int, seed: int) -> float:
    """Silhouette on a sample of at most ``sample`` rows (the full metric is quadratic in cost)."""
    total = predictions.count()
    fraction = min(1.0, sample / max(total, 1))
    sampled = predictions.sample(fraction=fraction, seed=seed) if fraction < 1 else predictions
    evaluator = ClusteringEvaluator(featuresCol="features_scaled", predictionCol="cluster")
    return float(evaluator.evaluate(sampled))


def model_inputs(spark: SparkSession, cfg: Config, run: RunContext) -> DataFrame:
    """customer_id and the layer's features (as doubles) of one snapshot."""
    features = tables.read(spark, cfg, "gold.customer_features").where(F.col("as_of") == F.lit(run.as_of))
    return features.select("customer_id", *[F.col(c).cast("double") for c in cfg.train.features])


def run_train(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Fit the layer's clustering on one snapshot, log it to MLflow and make it the champion."""
    train = cfg.train
    tracking.configure(cfg)
    # A fixed layout (hash partitions, sorted within) so that a rerun on the same rows fits the
    # same model: k-means|| initialisation depends on which rows sit in which partition.
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    data = (
        model_inputs(spark, cfg, run).repartition(partitions, "customer_id").sortWithinPartitions("customer_id").cache()
    )
    rows = data.count()
    if rows < train.k:
        raise ValueError(f"train: {rows} customers in gold.customer_features for {run.as_of}, fewer than k={train.k}")
    name = model_name(train.layer)
    tags = {
        "git_commit": tracking.git_commit(),
        "config_hash": tracking.config_hash(cfg),
        "as_of": str(run.as_of),
        "pipeline_run_id": run.run_id,
        "layer": train.layer,
        **tracking.input_versions(spark, cfg, ["gold.customer_features"]),
    }
    with mlflow.start_run(run_name=f"{train.layer}-all-{run.as_of}", tags=tags) as active:
        mlflow.log_params(
            {
                "layer": train.layer,
                "algorithm": "kmeans",
                "k": train.k,
                "seed": train.seed,
                "max_iter": train.max_iter,
                "features": ",".join(train.features),
                "rows": rows,
            }
        )
        model = clustering_pipeline(train).fit(data)
        predictions = model.transform(data).cache()
        sizes = {int(r["cluster"]): int(r["count"]) for r in predictions.groupBy("cluster").count().collect()}
        metrics = {
            "silhouette": silhouette(predictions, train.silhouette_sample, train.seed),
            "wssse": float(model.stages[-1].summary.trainingCost),
            "smallest_share": min(sizes.values()) / rows,
        }
        mlflow.log_metrics(metrics)
        mlflow.log_dict({str(k): v for k, v in sorted(sizes.items())}, "segment_sizes.json")
        centers = [list(map(float, c)) for c in model.stages[-1].clusterCenters()]
        mlflow.log_dict({"features": train.features, "scaled_centroids": centers}, "centroids.json")
        example = data.drop("customer_id").limit(5).toPandas()
        info = mlflow.spark.log_model(
            model,
            artifact_path="model",
            pip_requirements=cfg.mlflow.pip_requirements,
            signature=infer_signature(example, predictions.select("cluster").limit(5).toPandas()),
        )
        predictions.unpersist()
        mlflow_run_id = active.info.run_id
        version = register(cfg, name, info.model_uri, centers) if train.register_model else None
        mlflow.set_tag("registered_version", str(version))
    data.unpersist()
    report = StageReport(
        "train", info={"mlflow_run_id": mlflow_run_id, "model": name, "version": version, **metrics, "sizes": sizes}
    )
    report.entries.append(Entry(name, rows_in=rows, details={"mlflow_run_id": mlflow_run_id, **metrics}))
    return report


def register(cfg: Config, name: str, model_uri: str, centers: list[list[float]]) -> str:
    """Register the model and make it the champion, the old champion keeping the alias ``previous``.

    A rerun on the same data, config and code fits the same centroids; it then keeps
    the current champion instead of registering a copy, so reruns leave assignments as they were.
    """
    client = tracking.client(cfg)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None and _same_centroids(current.run_id, centers):
        return str(current.version)
    version = mlflow.register_model(model_uri, name).version
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return str(version)


def _same_centroids(run_id: str, centers: list[list[float]], tolerance: float = 1e-9) -> bool:
    try:
        previous = mlflow.artifacts.load_dict(f"runs:/{run_id}/centroids.json")["scaled_centroids"]
    except (mlflow.exceptions.MlflowException, OSError, KeyError):
        return False
    return len(previous) == len(centers) and all(
        len(p) == len(c) and all(abs(a - b) <= tolerance for a, b in zip(p, c, strict=True))
        for p, c in zip(previous, centers, strict=True)
    )


def load_champion(cfg: Config, layer: str, macro: str = "all") -> tuple[PipelineModel, dict]:
    """The champion model of a layer and its registry facts (name, version, training run id)."""
    tracking.configure(cfg)
    name = model_name(layer, macro)
    version = tracking.client(cfg).get_model_version_by_alias(name, CHAMPION)
    model = mlflow.spark.load_model(f"models:/{name}@{CHAMPION}")
    return model, {"model": name, "version": str(version.version), "run_id": version.run_id}
