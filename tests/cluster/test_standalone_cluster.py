"""The pipeline submitted with spark-submit to a real Spark standalone cluster (one master, one worker, 127.0.0.1).

Executors get the project's Python environment as an archive (scripts/pack_env.sh, shipped with --archives),
the driver runs in client mode with this venv's Python, Delta's jars come with --packages. The outputs are
then checked from the outside: Delta tables read with the test session, MLflow through its client.

The submissions run in the background while the other tests run, and these tests run last (conftest.py).
The run is kept small (300 customers, one model over everyone, a one-candidate sweep) because what it proves
is that every stage runs on a cluster, not how well; a busy machine makes it slow, and the limits leave
room for that: a red test here should mean a broken run, not a slow one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cluster_utils import java_available
from mlflow import MlflowClient
from pyspark.sql import functions as F

MODEL = "microseg-value-all"
EXPERIMENT = "microseg-cluster"  # conf/cluster.yaml
TABLES = [
    "silver.customers",
    "gold.customer_features",
    "gold.segment_assignments",
    "gold.segment_profiles",
    "ops.run_log",
    "ops.dq_results",
]

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not java_available(), reason="Spark standalone needs Java (17): no java on PATH and no JAVA_HOME"
    ),
]


@pytest.fixture(scope="module")
def cluster(cluster_run):
    return cluster_run.cluster


@pytest.fixture(scope="module")
def pipeline_run(cluster_run) -> dict:
    """jobs/pipeline.py submitted to the cluster (conftest.PIPELINE_SETTINGS), over."""
    step = cluster_run.finished("pipeline")
    return {
        "lake": cluster_run.lake,
        "data": cluster_run.data,
        "tracking_uri": cluster_run.tracking_uri,
        "log": step.log,
    }


def test_executors_run_the_shipped_environment(cluster_run, cluster):
    log = cluster_run.finished("probe").log
    line = next(x for x in log.read_text().splitlines() if x.startswith("PROBE "))
    seen = json.loads(line.removeprefix("PROBE "))
    assert Path(seen["driver"]) == Path(sys.prefix)
    assert len(seen["executors"]) == 2
    for executor in seen["executors"]:
        prefix = Path(executor["prefix"])
        assert prefix.name == "environment" and cluster.work in prefix.parents, executor
        assert Path(executor["microseg"]).is_relative_to(prefix), executor
        assert executor["mlflow"] == "3.17.2", executor


def test_pipeline_ran_on_the_cluster(cluster, pipeline_run: dict):
    apps = {app["name"]: app["state"] for app in cluster.state()["completedapps"]}
    assert apps.get("microseg") == "FINISHED", apps
    # The executor of the pipeline's application unpacked the archive in the worker's work dir.
    assert any(cluster.work.glob("app-*/*/environment/bin/python")), sorted(cluster.work.glob("app-*/*"))


def test_delta_tables_exist(spark, pipeline_run: dict):
    lake, data = pipeline_run["lake"], pipeline_run["data"]
    sources = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert len(sources) >= 7, sources
    for name in [f"bronze.{s}" for s in sources] + TABLES:
        path = lake.joinpath(*name.split("."))
        assert (path / "_delta_log").is_dir(), f"{name}: no Delta table at {path}"
        assert spark.read.format("delta").load(str(path)).count() > 0, f"{name} is empty"


def test_one_assignment_per_featured_customer(spark, pipeline_run: dict):
    lake = pipeline_run["lake"]
    customers = json.loads((pipeline_run["data"] / "_manifest.json").read_text())["customers"]
    features = spark.read.format("delta").load(str(lake / "gold" / "customer_features"))
    assigned = spark.read.format("delta").load(str(lake / "gold" / "segment_assignments"))
    n_features = features.select("customer_id").distinct().count()
    assert 0.5 * customers < n_features <= customers
    assert assigned.count() == assigned.select("customer_id").distinct().count() == n_features
    assert features.join(assigned, "customer_id", "left_anti").count() == 0
    assert assigned.join(features, "customer_id", "left_anti").count() == 0
    assert assigned.where(F.col("segment_id").isNull()).count() == 0


def test_mlflow_run_and_champion(pipeline_run: dict):
    client = MlflowClient(tracking_uri=pipeline_run["tracking_uri"], registry_uri=pipeline_run["tracking_uri"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT!r}"
    runs = client.search_runs([experiment.experiment_id])
    silhouettes = [r.data.metrics["silhouette"] for r in runs if "silhouette" in r.data.metrics]
    assert silhouettes, [r.data.metrics for r in runs]
    assert all(-1.0 <= s <= 1.0 for s in silhouettes)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id in {r.info.run_id for r in runs}
