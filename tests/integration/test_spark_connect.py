"""`microseg run --remote sc://...`: every stage through Spark Connect, against a local Connect server with Delta.

The module starts its own Spark Connect server (spark-submit of SparkConnectServer from the pyspark
package, Delta's jars, a free port, logs in a temporary folder) and runs the CLI in a subprocess: the
tests share one classic SparkSession in this process, which a Connect client here would disturb. That
classic session then reads the lake the server wrote and checks it independently.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow.spark
import pyspark
import pytest
from pyspark.sql import functions as F
from servers import free_port, serving

import microseg
from microseg.runtime import lake, tables
from microseg.runtime.session import DELTA_SETTINGS, package_jars
from microseg.segmentation import registry
from microseg.stages import STAGES
from microseg.synthetic.datagen import SOURCES

pytestmark = pytest.mark.integration

AS_OF = dt.date(2025, 12, 31)
# tests/conftest.py's TEST_SETTINGS as `microseg run --set` takes them (of spark.*, a Connect session sets those
# the server lets it set).
SETTINGS = (
    f"run.as_of={AS_OF}",
    "spark.shuffle_partitions=2",
    "spark.settings.spark.sql.codegen.wholeStage='false'",
    "spark.settings.spark.sql.codegen.factoryMode='NO_CODEGEN'",
    "tables.metastore=none",
    # A sweep (scikit-learn in a mapInPandas job) and MLlib refits on these few customers, every layer.
    "train.by_macro=false",
    "train.min_macro_size=100",
    "train.k_max=4",
    # tests/conftest.py's CHURN_SETTINGS: a short boosting and baseline
    "value.churn.max_iter=4",
    "value.churn.baseline_max_iter=10",
    "value.churn.max_depth=3",
)


@pytest.fixture(scope="module")
def connect_server(make_config, tmp_path_factory: pytest.TempPathFactory):
    """A Spark Connect server with Delta on 127.0.0.1:<free port>; its URL. Stopped (its process group) at the end."""
    folder = tmp_path_factory.mktemp("spark-connect")
    cfg = make_config()
    jars = package_jars(cfg.spark.packages, {})
    home = Path(pyspark.__file__).parent
    port = free_port()
    settings = {
        **DELTA_SETTINGS,
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.pyspark.python": sys.executable,
        "spark.sql.shuffle.partitions": "2",
    }
    confs = [arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")]
    command = [str(home / "bin" / "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
               "--master", "local[2]", "--jars", ",".join(jars), *confs, "spark-internal"]  # fmt: skip
    # The server's Python workers (pandas UDFs, mapInPandas) run PYSPARK_PYTHON: this environment's interpreter.
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    with serving(command, port, folder / "server.log", env=env, cwd=folder):
        yield f"sc://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def remote_run(tiny_generated, connect_server, make_config, tmp_path_factory: pytest.TempPathFactory):
    """Tiny generated data, then `microseg run --remote` of every stage in a subprocess; (cfg, process, seconds)."""
    data, _ = tiny_generated
    lake_root = tmp_path_factory.mktemp("connect-lake") / "lake"
    cfg = make_config(f"sources.root={data}", "tables.metastore=none", lake=lake_root)
    settings = [*SETTINGS, f"lake.root={lake_root}", f"sources.root={data}"]
    command = [sys.executable, "-c", "import sys; from microseg.cli import main; sys.exit(main(sys.argv[1:]))",
               "run", "--conf", "conf/local.yaml", "--remote", connect_server, "--as-of", str(AS_OF),
               *[f"--set={s}" for s in settings]]  # fmt: skip
    # The subprocess imports this checkout's microseg, whatever installed the venv's.
    libs = str(Path(microseg.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([libs, os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2],
                             timeout=1800)  # fmt: skip
    return cfg, process, time.perf_counter() - started


def test_every_stage_runs_through_spark_connect(remote_run):
    _, process, seconds = remote_run
    assert process.returncode == 0, process.stderr[-5000:]
    print(f"microseg run --remote: {seconds:.0f}s")
    # Jobs are not counted under Spark Connect: the summary says so rather than a number.
    assert "Spark jobs not counted" in process.stderr


def test_run_log_says_every_stage_ok(spark, remote_run):
    cfg, process, _ = remote_run
    assert process.returncode == 0
    logged = tables.read(spark, cfg, lake.RUN_LOG).where(F.col("as_of") == F.lit(AS_OF))
    by_stage = {
        r["stage"]: r["statuses"]
        for r in logged.groupBy("stage").agg(F.collect_set("status").alias("statuses")).collect()
    }
    assert by_stage == {stage: ["ok"] for stage in STAGES}


def test_every_gold_table_exists_and_assignments_cover_every_customer_and_layer(spark, remote_run, tiny_generated):
    cfg, process, _ = remote_run
    assert process.returncode == 0
    for table in (lake.CUSTOMER_FEATURES, lake.SEGMENT_ASSIGNMENTS, lake.SEGMENT_HISTORY, lake.SEGMENT_PROFILES):
        assert tables.exists(spark, cfg, table), table
    features = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(AS_OF))
    customers = {r[0] for r in features.select("customer_id").collect()}
    assert 0 < len(customers) <= tiny_generated[1]["customers"]
    assigned = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(F.col("as_of") == F.lit(AS_OF))
    rows = assigned.select("customer_id", "layer", "segment_id").collect()
    layers = set(cfg.train.active_layers)
    assert {(r["customer_id"], r["layer"]) for r in rows} == {(c, layer) for c in customers for layer in layers}
    assert len(rows) == len(customers) * len(layers)  # one row each, no duplicates
    assert all(r["segment_id"] for r in rows)
    # The type 2 history (a MERGE in SQL) opened one current row per assignment.
    history = tables.read(spark, cfg, lake.SEGMENT_HISTORY)
    assert history.where("is_current").count() == len(rows) == history.count()
    profiled = tables.read(spark, cfg, lake.SEGMENT_PROFILES).where(F.col("as_of") == F.lit(AS_OF))
    assert {r[0] for r in profiled.select("segment_id").collect()} == {r["segment_id"] for r in rows}


def test_rows_the_run_log_reports_are_the_rows_in_the_tables(spark, remote_run):
    cfg, process, _ = remote_run
    assert process.returncode == 0
    logged = tables.read(spark, cfg, lake.RUN_LOG).where(F.col("as_of") == F.lit(AS_OF)).collect()
    written = {(r["stage"], r["source"]): r["rows_written"] for r in logged}
    for source in SOURCES:
        assert written[("ingest", source)] == tables.read(spark, cfg, lake.bronze(source)).count(), source
    as_of = F.col("as_of") == F.lit(AS_OF)
    features = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(as_of).count()
    assert written[("features", lake.CUSTOMER_FEATURES.name)] == features
    assignments = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(as_of).count()
    assert written[("assign", lake.SEGMENT_ASSIGNMENTS.name)] == assignments


def test_a_champion_trained_over_connect_loads_in_a_classic_session(spark, remote_run):
    """The model was logged through the lake's staging folder (runtime/spark_models): a proper spark-flavor model."""
    cfg, process, _ = remote_run
    assert process.returncode == 0
    registry.configure(cfg)
    features = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(AS_OF))
    assigned = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(F.col("as_of") == F.lit(AS_OF))
    name, version = assigned.select("model_name", "model_version").orderBy("model_name").first()
    assert str(registry.champion_version(cfg, name).version) == version
    model = mlflow.spark.load_model(f"models:/{name}@{registry.CHAMPION}")
    assert model.transform(features).count() == features.count()
    assert not list((Path(cfg.lake_root) / "_tmp" / "models").glob("[0-9a-f]*"))  # the logged copies were removed
