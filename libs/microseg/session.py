"""The one place a SparkSession with Delta Lake is built."""

from __future__ import annotations

import os
import re
import sys

from pyspark.sql import SparkSession

from microseg.config import Config

DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _local_cores(master: str) -> int | None:
    match = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]", master)
    if master == "local":
        return 1
    if not match:
        return None
    return (os.cpu_count() or 2) if match.group(1) == "*" else int(match.group(1))


def build_spark(cfg: Config) -> SparkSession:
    """Build (or reuse) the SparkSession described by ``cfg.spark``.

    Delta's jars come from ``spark.packages`` (Maven coordinates): Spark's Ivy
    resolves them from Maven Central on first start and caches them under
    ~/.ivy2.5.2, where the next start finds them. On a cluster whose image
    already holds the jars, set ``spark.packages: []``.
    """
    spark_cfg = cfg.spark
    if spark_cfg.local_ip and spark_cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", spark_cfg.local_ip)
    builder = SparkSession.builder.appName(spark_cfg.app_name)
    # Under spark-submit the master comes from the command line, not from config.
    if not _submitted():
        builder = builder.master(spark_cfg.master)
    settings = {
        **DELTA_SETTINGS,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        **spark_cfg.settings,
    }
    cores = _local_cores(spark_cfg.master)
    if cores:
        # Local Python workers must run in this environment (pandas UDFs need its pyarrow and
        # libraries), not whatever python3 comes first on PATH; PySpark reads the variable at start.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    partitions = spark_cfg.shuffle_partitions or cores
    if partitions:
        settings.setdefault("spark.sql.shuffle.partitions", str(partitions))
        settings.setdefault("spark.databricks.delta.snapshotPartitions", str(max(partitions, 2)))
    if spark_cfg.packages:
        settings["spark.jars.packages"] = ",".join(spark_cfg.packages)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_cfg.log_level)
    return spark


def _submitted() -> bool:
    """True when this driver was started by spark-submit (which sets the master itself)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
