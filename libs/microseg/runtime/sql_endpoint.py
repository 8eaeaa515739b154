"""SQL clients on the project's tables: ``spark-sql`` and the Spark Thrift Server (JDBC/ODBC), with Delta.

Both ship in the pyspark package (``$SPARK_HOME/bin``). They run with the settings a pipeline session
has (Delta, the metastore of ``tables.metastore``, ``spark.settings``), so they see the tables the
pipeline named. The Thrift Server loads Delta's catalog when a client session opens, and Hive's
metastore client loads the JDBC driver of a PostgreSQL metastore, both from the driver's class path:
the packages' own jars go there too, not only in ``spark.jars``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyspark

from microseg.runtime.config import Config
from microseg.runtime.session import driver_class_path, package_jars, shared_settings, spark_packages

THRIFT_SERVER = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"


def spark_home() -> Path:
    """The Spark distribution inside the pyspark package (bin/spark-sql, bin/beeline, jars/)."""
    return Path(pyspark.__file__).parent


def settings(cfg: Config) -> dict[str, str]:
    """The Spark settings of a SQL endpoint on ``cfg``'s tables."""
    conf = {
        "spark.master": cfg.spark.master,
        "spark.ui.enabled": "false",
        # spark-sql and the Thrift Server turn on Java 8 dates, which Delta's answer of MIN/MAX/COUNT from the
        # log does not take (ClassCastException LocalDate -> java.sql.Date): such queries read the data.
        "spark.databricks.delta.optimizeMetadataQuery.enabled": "false",
        **shared_settings(cfg),
    }
    packages = spark_packages(cfg)
    resolved = package_jars(packages, conf) if packages else []
    if jars := [*cfg.spark.jars, *resolved]:
        conf["spark.jars"] = ",".join(jars)
        # The offline jars wholly, of the resolved ones only the packages' own (session.driver_class_path).
        own = driver_class_path(packages, resolved) if resolved else ""
        conf["spark.driver.extraClassPath"] = os.pathsep.join(filter(None, [*cfg.spark.jars, own]))
    return conf


def environment(cfg: Config) -> dict[str, str]:
    """The environment the endpoint runs in: this SPARK_HOME, and the local IP of ``spark.local_ip``."""
    env = {**os.environ, "SPARK_HOME": str(spark_home())}
    if cfg.spark.local_ip:
        env.setdefault("SPARK_LOCAL_IP", cfg.spark.local_ip)
    return env


def _confs(conf: dict[str, str]) -> list[str]:
    return [arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")]


def spark_sql_command(cfg: Config, args: list[str]) -> list[str]:
    """``spark-sql`` on the project's metastore; ``args`` are spark-sql's own (``-e "SELECT ..."``, ``-f file``)."""
    return [str(spark_home() / "bin" / "spark-sql"), *_confs(settings(cfg)), *args]


def thrift_server_command(cfg: Config, host: str, port: int) -> list[str]:
    """The Spark Thrift Server in the foreground, answering JDBC/ODBC clients on ``host:port``."""
    conf = {
        **settings(cfg),
        "spark.app.name": "microseg-sql-server",
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.hadoop.hive.server2.thrift.port": str(port),
    }
    return [str(spark_home() / "bin" / "spark-submit"), "--class", THRIFT_SERVER, *_confs(conf), "spark-internal"]


def beeline_command(host: str, port: int, sql: str) -> list[str]:
    """``beeline`` running ``sql`` (statements ending in ``;``) against a Thrift Server; CSV rows on stdout,
    a header first. Without the final ``;`` beeline prints its prompt before the rows."""
    return [
        str(spark_home() / "bin" / "beeline"),
        "-u",
        f"jdbc:hive2://{host}:{port}/default",
        "-n",
        os.environ.get("USER", "microseg"),
        "--silent=true",
        "--outputformat=csv2",
        "-e",
        sql,
    ]
