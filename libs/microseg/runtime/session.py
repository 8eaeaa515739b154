"""The one place a SparkSession with Delta Lake is built."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pyspark
import yaml
from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from microseg.runtime import sparkops
from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError, SparkPackagesError

log = logging.getLogger(__name__)
JVM_LOG4J = Path(__file__).with_name("log4j2.properties")  # see _jvm_logging

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
    ~/.ivy2.5.2; later starts pass the cached jars as ``spark.jars`` and skip
    Ivy (see ``package_jars``). Under spark-submit the packages stay
    ``spark.jars.packages`` (pass ``--packages`` there). On a cluster whose
    image already holds the jars, set ``spark.packages: []``.

    Raises:
        SparkPackagesError: the first start could not resolve ``spark.packages``.
    """
    spark_cfg = cfg.spark
    if spark_cfg.remote:
        return _connect(cfg)
    if spark_cfg.local_ip and spark_cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", spark_cfg.local_ip)
    builder = SparkSession.builder.appName(spark_cfg.app_name)
    # Under spark-submit the master comes from the command line, not from config.
    if not _submitted():
        builder = builder.master(spark_cfg.master)
    settings = {
        "spark.ui.showConsoleProgress": "false",
        # The status tracker (sparkops.jobs_in_group: Spark jobs per stage) only knows the jobs
        # and stages Spark retains, 1,000 each by default, also with the UI off.
        "spark.ui.retainedJobs": "10000",
        "spark.ui.retainedStages": "10000",
        **shared_settings(cfg),
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
    packages = spark_packages(cfg)
    jars = list(spark_cfg.jars)
    if packages:
        # Under spark-submit, or with a session already running here, the JVM's jars are settled.
        if _submitted() or SparkContext._active_spark_context is not None:
            settings["spark.jars.packages"] = ",".join(packages)
        else:
            resolved = package_jars(packages, settings)
            jars += resolved
            if cfg.tables.metastore == "hive":  # its JDBC driver is loaded by Hive's client, from the class path
                settings.setdefault("spark.driver.extraClassPath", driver_class_path(packages, resolved))
    if not _submitted() and SparkContext._active_spark_context is None:
        _jvm_logging(settings)
    if jars:
        settings["spark.jars"] = ",".join([*filter(None, settings.get("spark.jars", "").split(",")), *jars])
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_cfg.log_level)
    if settings.get("spark.sql.catalogImplementation") == "hive":
        _quiet_metastore(spark)
    return spark


def spark_packages(cfg: Config) -> list[str]:
    """``spark.packages``, and those of ``spark.packages_when`` the config uses: ``jdbc`` with a source of format
    jdbc or a Hive metastore (its database's driver), ``s3a`` with the lake or the sources on s3a://."""
    used = set()
    if "jdbc" in _source_formats(cfg) or cfg.tables.metastore == "hive":
        used.add("jdbc")
    if any(root.startswith("s3a://") for root in (cfg.lake.root, cfg.sources.root)):
        used.add("s3a")
    extra = [p for use, packages in sorted(cfg.spark.packages_when.items()) if use in used for p in packages]
    return list(dict.fromkeys([*cfg.spark.packages, *extra]))


def _source_formats(cfg: Config) -> set[str]:
    """The formats the source mapping's sources declare (read raw here; the ingest stage validates the mapping)."""
    path = cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml")
    try:
        sources = (yaml.safe_load(path.read_text()) or {}).get("sources") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return set()
    return {str(spec.get("format")) for spec in sources.values() if isinstance(spec, dict)}


def _connect(cfg: Config) -> SparkSession:
    """A Spark Connect session on ``spark.remote``, with the project's settings the server lets a session set.

    The server owns its jars and static settings (Delta's extension and catalog, the metastore): they are
    checked, not set, and a server without Delta fails here rather than at the first table. The server's
    Python workers (pandas UDFs, the sweep's mapInPandas) run the ``PYSPARK_PYTHON`` of its environment (not
    ``spark.pyspark.python``): start it with that variable naming an interpreter with this project's
    libraries, pandas and pyarrow. What differs under Spark Connect is in ``runtime.delta_ops`` (Delta in
    SQL), ``runtime.spark_models`` (models to and from MLflow) and ``runtime.sparkops``.

    Raises:
        ConfigError: the server does not run Delta Lake's catalog.
    """
    spark = SparkSession.builder.remote(cfg.spark.remote).getOrCreate()
    sparkops.defer_model_release()
    settings = {**shared_settings(cfg)}
    if cfg.spark.shuffle_partitions:
        settings["spark.sql.shuffle.partitions"] = str(cfg.spark.shuffle_partitions)
    modifiable = {key: value for key, value in settings.items() if spark.conf.isModifiable(key)}
    for key, value in modifiable.items():
        spark.conf.set(key, value)
    catalog = spark.conf.get("spark.sql.catalog.spark_catalog", None)
    if catalog != DELTA_SETTINGS["spark.sql.catalog.spark_catalog"]:
        raise ConfigError(
            f"the Spark Connect server at {cfg.spark.remote} does not run Delta Lake (spark.sql.catalog.spark_catalog "
            f"is {catalog!r}): start it with --packages io.delta:delta-spark_4.1_2.13:4.4.0 and --conf "
            + " --conf ".join(f"{k}={v}" for k, v in DELTA_SETTINGS.items())
        )
    unset = sorted(key for key in settings if key not in modifiable and spark.conf.get(key, None) != settings[key])
    if unset:
        log.warning("the Spark Connect server keeps its own value of %s (static settings)", ", ".join(unset))
    return spark


# Warnings the Hive metastore logs for what is expected here: every Delta table ("no Hive SerDe for data
# source provider delta", Spark keeps its own format), every schema looked up before it exists, and Hive
# settings Spark's embedded Hive client does not use.
METASTORE_NOISE = (
    "org.apache.spark.sql.hive.HiveExternalCatalog",
    "org.apache.hadoop.hive.metastore.ObjectStore",
    "org.apache.hadoop.hive.ql.session.SessionState",
    "org.apache.hadoop.hive.conf.HiveConf",
)


def _quiet_metastore(spark: SparkSession) -> None:
    log4j = spark.sparkContext._jvm.org.apache.logging.log4j
    for logger in METASTORE_NOISE:
        log4j.core.config.Configurator.setLevel(logger, log4j.Level.ERROR)


def shared_settings(cfg: Config) -> dict[str, str]:
    """What every Spark process on the project's tables runs with: Delta, UTC, the metastore, then
    ``spark.settings`` (which override the rest)."""
    return {
        **DELTA_SETTINGS,
        "spark.sql.session.timeZone": "UTC",
        **metastore_settings(cfg),
        **cfg.spark.settings,
    }


def driver_class_path(packages: list[str], jars: list[str]) -> str:
    """The jars of ``packages``' own groups (Delta's, the JDBC driver's), joined as a class path.

    Their dependencies stay off it: they would come before Spark's own jars (an older Jackson, for one).
    """
    groups = {package.split(":", 1)[0] for package in packages}
    own = [jar for jar in jars if Path(jar).name.split("_", 1)[0] in groups]
    return os.pathsep.join(own)


def metastore_settings(cfg: Config) -> dict[str, str]:
    """The Spark settings of the metastore ``tables.metastore`` names (none for ``session`` and ``none``).

    ``embedded``: Spark's Hive metastore in Derby under ``cfg.metastore_dir``, created on first use; Derby
    admits one JVM at a time. ``hive``: Hive support only; the connection comes from ``spark.settings``.

    Raises:
        ConfigError: ``embedded`` with a remote lake and no local ``tables.metastore_dir``.
    """
    kind = cfg.tables.metastore
    if kind not in ("embedded", "hive"):
        return {}
    settings = {"spark.sql.catalogImplementation": "hive"}
    if kind == "embedded":
        folder = cfg.metastore_dir
        if "://" in folder and not folder.startswith("file:"):
            raise ConfigError(
                f"tables.metastore embedded keeps Derby on local disk, not at {folder}: set tables.metastore_dir "
                "to a local folder, or tables.metastore to hive or session for a shared metastore"
            )
        folder = folder.removeprefix("file:")
        derby = f"jdbc:derby:;databaseName={folder}/metastore_db;create=true"
        settings |= {
            "spark.hadoop.javax.jdo.option.ConnectionURL": derby,
            "spark.sql.warehouse.dir": f"{folder}/warehouse",
            # derby.log goes beside the database, not into the working directory.
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={folder}",
        }
    return settings


def _jvm_logging(settings: dict[str, str]) -> None:
    """Unless microseg logs at DEBUG, the driver JVM it starts logs to the console without Java stack traces and
    to a file with them (runtime/log4j2.properties): a failing task prints a line, not a screen of frames."""
    if logging.getLogger("microseg").isEnabledFor(logging.DEBUG):
        return
    log_file = Path(tempfile.gettempdir()) / f"microseg-jvm-{os.getpid()}.log"
    options = f"-Dlog4j2.configurationFile={JVM_LOG4J.as_uri()} -Dmicroseg.jvm.log={log_file}"
    given = settings.get("spark.driver.extraJavaOptions")
    settings["spark.driver.extraJavaOptions"] = f"{given} {options}" if given else options
    log.info("Spark's own log, with Java stack traces: %s", log_file)


def _submitted() -> bool:
    """True when this driver was started by spark-submit (which sets the master itself)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


# Settings that change what Ivy resolves for the same coordinates.
_IVY_KEYS = ("spark.jars.repositories", "spark.jars.excludes", "spark.jars.ivy", "spark.jars.ivySettings")


def package_jars(packages: list[str], settings: dict[str, str]) -> list[str]:
    """The local jar files of ``packages`` and their dependencies, to pass as ``spark.jars``.

    Spark's Ivy resolves ``spark.jars.packages`` on every start, even from a warm cache: seconds of
    work and a listing of every artifact on the console. The first start resolves them once, in a
    JVM of its own whose output stays off the console, and lists the jars Ivy retrieved in a
    manifest beside Ivy's cache; later starts use the manifest while all its jars exist.

    Raises:
        SparkPackagesError: Ivy could not resolve them (the message quotes Ivy).
    """
    ivy = {key: settings[key] for key in _IVY_KEYS if settings.get(key)}
    ivy_dir = Path(ivy.get("spark.jars.ivy") or Path.home() / ".ivy2.5.2").expanduser()
    key = json.dumps({"packages": sorted(packages), "spark": pyspark.__version__, **ivy}, sort_keys=True)
    manifest = ivy_dir / "microseg" / f"jars-{hashlib.sha256(key.encode()).hexdigest()[:16]}.txt"
    if jars := _listed(manifest):
        return jars
    manifest.parent.mkdir(parents=True, exist_ok=True)
    # Two processes starting at once on a fresh machine would run Ivy on one cache together (its default
    # locking lets them overwrite each other's files): the second waits, then finds the first's manifest.
    with open(manifest.parent / ".resolve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars := _listed(manifest):
            return jars
        log.info("resolving Spark packages %s with Ivy (first start: downloads to %s)", ", ".join(packages), ivy_dir)
        jars = _resolve(packages, ivy)
        staged = manifest.with_suffix(f".{os.getpid()}.tmp")
        staged.write_text("\n".join(jars) + "\n")
        staged.replace(manifest)
    log.info("resolved %d jars; next starts take them from %s", len(jars), manifest)
    return jars


def _listed(manifest: Path) -> list[str]:
    """The jars ``manifest`` lists, if it exists and all of them do; else []."""
    jars = manifest.read_text().split() if manifest.exists() else []
    if jars and all(Path(jar).is_file() for jar in jars):
        log.debug("Spark packages: %d jars listed in %s", len(jars), manifest)
        return jars
    return []


def _resolve(packages: list[str], ivy: dict[str, str]) -> list[str]:
    """Resolve ``packages`` with spark-submit's Ivy in a JVM started for that alone; its jar paths.

    The JVM is the one PySpark starts for a session (a py4j gateway, no SparkContext yet), so Ivy
    runs with the settings, caches and repositories the session's own start would use.
    """
    from pyspark.java_gateway import launch_gateway

    conf = SparkConf(loadDefaults=False).setAll([("spark.jars.packages", ",".join(packages)), *ivy.items()])
    with tempfile.TemporaryFile(mode="w+b") as output:
        try:
            gateway = launch_gateway(conf, popen_kwargs={"stdout": output, "stderr": subprocess.STDOUT})
        except Exception as exc:  # the JVM exited before its gateway started: Ivy's output says why
            output.seek(0)
            said = [line for line in output.read().decode(errors="replace").splitlines() if line.strip()]
            said = [line for line in said if not line.lstrip().startswith("at ")][-12:]
            raise SparkPackagesError(
                f"Spark could not resolve spark.packages {', '.join(packages)} ({exc}). Ivy said:\n"
                + "\n".join(said)
                + "\nCheck the coordinates and that Maven Central (or spark.jars.repositories) is reachable; "
                "`mvn dependency:get -Dartifact=<coordinates>` fills ~/.m2, which Ivy reads too."
            ) from exc
        try:
            jars = gateway.jvm.java.lang.System.getProperty("spark.jars") or ""
        finally:
            gateway.shutdown()
            gateway.proc.stdin.close()  # the gateway JVM exits when its stdin closes
            try:
                gateway.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                gateway.proc.kill()
        output.seek(0)
        log.debug("Ivy:\n%s", output.read().decode(errors="replace"))
    paths = [jar.removeprefix("file://") for jar in jars.split(",") if jar]
    if not paths:
        raise SparkPackagesError(f"Spark resolved spark.packages {', '.join(packages)} to no jars")
    return paths
