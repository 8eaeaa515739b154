"""The pipeline submitted with spark-submit to a real Spark standalone cluster (one master, one worker, 127.0.0.1).

Executors get the project's Python environment as an archive (scripts/pack_env.sh, shipped with --archives),
the driver runs in client mode with this venv's Python, Delta's jars come with --packages. The outputs are
then checked from the outside: Delta tables read with the test session, MLflow through its client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_utils import SPARK_HOME, StandaloneCluster, finish, run_logged, spark_env, start_logged, tail
from mlflow import MlflowClient
from pyspark.sql import functions as F

REPO = Path(__file__).resolve().parents[2]
DELTA_PACKAGE = "io.delta:delta-spark_4.1_2.13:4.4.0"  # 4.4.1 jars are not on Maven Central
CUSTOMERS = 2000
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
        shutil.which("java") is None and not Path(os.environ.get("JAVA_HOME", "/nonexistent"), "bin", "java").exists(),
        reason="Spark standalone needs Java (17): no java on PATH and no JAVA_HOME",
    ),
]

PROBE = """
import json, sys
from importlib.metadata import version
from pyspark.sql import SparkSession

def probe(_):
    import microseg, pandas, pyarrow
    yield {"prefix": sys.prefix, "microseg": microseg.__file__, "mlflow": version("mlflow"),
           "great_expectations": version("great_expectations")}

spark = SparkSession.builder.appName("microseg-env-probe").getOrCreate()
seen = spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect()
print("PROBE " + json.dumps({"driver": sys.prefix, "executors": seen}))
spark.stop()
"""


def submit(cluster: StandaloneCluster, archive: Path, log: Path, *args: str, timeout: float = 420) -> int:
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master", cluster.url,
        "--deploy-mode", "client",
        "--archives", f"{archive}#environment",
        "--conf", "spark.pyspark.python=./environment/bin/python",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", "spark.executor.memory=1g",
        *args,
    ]  # fmt: skip
    env = spark_env(MICROSEG_HASH_KEY=os.environ["MICROSEG_HASH_KEY"])
    return run_logged(cmd, log, timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def env_archive() -> Path:
    """build/env-<hash>.tar.gz, built on first use and reused while pyproject.toml, libs/ and the venv are unchanged."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "pack_env.sh"), str(Path(sys.prefix))],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"scripts/pack_env.sh failed:\n{done.stdout}\n{done.stderr}"
    return REPO / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    cluster = StandaloneCluster(tmp_path_factory.mktemp("standalone"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-run")


@pytest.fixture(scope="module")
def datagen(workdir: Path):
    """``microseg datagen`` started in the background, to run while the archive is packed and the cluster starts."""
    out, log = workdir / "data", workdir / "datagen.log"
    cmd = [
        str(Path(sys.prefix) / "bin" / "microseg"), "datagen", "--customers", str(CUSTOMERS), "--out", str(out),
        "--set", "datagen.partitions=2", "--set", "spark.master=local[2]", "--set", "spark.log_level=ERROR",
    ]  # fmt: skip
    proc = start_logged(cmd, log, cwd=REPO, env=spark_env())
    yield proc, out, log
    finish(proc, timeout=0)


@pytest.fixture(scope="module")
def source_data(datagen) -> Path:
    proc, out, log = datagen
    code = finish(proc, timeout=300)
    assert code == 0, f"microseg datagen exited {code}:\n{tail(log)}"
    return out


@pytest.fixture(scope="module")
def pipeline_run(cluster: StandaloneCluster, env_archive: Path, source_data: Path, workdir: Path) -> dict:
    lake = workdir / "lake"
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    log = workdir / "pipeline.log"
    code = submit(
        cluster, env_archive, log,
        "--packages", DELTA_PACKAGE,
        str(REPO / "jobs" / "pipeline.py"),
        "--conf", "conf/cluster.yaml",
        "--set", f"lake.root={lake}",
        "--set", f"sources.root={source_data}",
        "--set", f"mlflow.tracking_uri={tracking_uri}",
        "--set", "spark.shuffle_partitions=4",
        # One small model over everyone keeps the cluster run short; training itself is tested elsewhere.
        "--set", "train.by_macro=false",
        "--set", "train.layers.engagement=null",
        "--set", "train.layers.preference=null",
        "--set", "train.layers.value.algorithms=[kmeans]",
        "--set", "train.k_max=4",
    )  # fmt: skip
    assert code == 0, f"spark-submit jobs/pipeline.py exited {code}:\n{tail(log, 80)}\n{cluster.log_tails()}"
    return {"lake": lake, "data": source_data, "tracking_uri": tracking_uri, "log": log}


def test_executors_run_the_shipped_environment(datagen, cluster: StandaloneCluster, env_archive: Path, workdir: Path):
    # (datagen first: the data for the pipeline is generated meanwhile)
    probe = workdir / "probe_env.py"
    probe.write_text(PROBE)
    log = workdir / "probe.log"
    code = submit(cluster, env_archive, log, str(probe), timeout=180)
    assert code == 0, f"spark-submit probe exited {code}:\n{tail(log, 80)}\n{cluster.log_tails()}"
    line = next(x for x in log.read_text().splitlines() if x.startswith("PROBE "))
    seen = json.loads(line.removeprefix("PROBE "))
    assert Path(seen["driver"]) == Path(sys.prefix)
    assert len(seen["executors"]) == 2
    for executor in seen["executors"]:
        prefix = Path(executor["prefix"])
        assert prefix.name == "environment" and cluster.work in prefix.parents, executor
        assert Path(executor["microseg"]).is_relative_to(prefix), executor
        assert executor["mlflow"] == "3.17.2", executor


def test_pipeline_ran_on_the_cluster(cluster: StandaloneCluster, pipeline_run: dict):
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
    features = spark.read.format("delta").load(str(lake / "gold" / "customer_features"))
    assigned = spark.read.format("delta").load(str(lake / "gold" / "segment_assignments"))
    n_features = features.select("customer_id").distinct().count()
    assert 0.5 * CUSTOMERS < n_features <= CUSTOMERS
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
