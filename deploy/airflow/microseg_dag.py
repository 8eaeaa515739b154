"""Airflow DAG ``microseg_daily``: the pipeline's seven stages as spark-submit tasks, once a day.

Install: copy or symlink this file into the dags folder of an Airflow 3.x (or 2.9+) deployment whose workers
have apache-airflow-providers-apache-spark, spark-submit, and the project at MICROSEG_PROJECT_DIR (jobs/, conf/,
the driver's Python environment and scripts/pack_env.sh's archive for the executors). The Spark connection
(default ``spark_default``) gives the master and deploy mode. tests/integration/test_deploy.py loads it with
apache-airflow 3.3.2 and the Spark provider 6.3.4.

Site settings are environment variables of the scheduler and workers, read when the file is parsed (nothing
asks the metadata database at import):

    MICROSEG_SPARK_CONN_ID   Spark connection id                   spark_default
    MICROSEG_PROJECT_DIR     folder holding jobs/ and conf/        /opt/microseg
    MICROSEG_CONF            config file, in the project folder    conf/cluster.yaml
    MICROSEG_ENV_ARCHIVE     executors' environment archive        <project>/build/env.tar.gz
    MICROSEG_DRIVER_PYTHON   the driver's Python (client mode)     <project>/.venv/bin/python
                             (YARN/Kubernetes cluster mode: ./environment/bin/python)
    MICROSEG_DELTA_PACKAGE   Delta's Maven coordinates             io.delta:delta-spark_4.1_2.13:4.4.0
    MICROSEG_SET             extra config overrides "k=v k=v", each passed as --set k=v

conf/cluster.yaml reads MICROSEG_LAKE_ROOT, MICROSEG_SOURCES_ROOT and MLFLOW_TRACKING_URI: when the worker has
them they go to the driver with the hash key (below).

MICROSEG_HASH_KEY is a secret: it is neither in this file nor read at parse time. Keep it in the Airflow Variable
``microseg_secret_hash_key`` (a secrets backend such as Vault can serve it; "secret" in the name makes Airflow mask
its value in task logs and rendered templates). Each task renders it into ``env_vars`` when it runs: the Spark
provider gives them to the spark-submit process in client mode and to the driver as spark.yarn.appMasterEnv.* or
spark.kubernetes.driverEnv.* in cluster mode; spark.redaction.regex hides it in the Spark UI and event logs.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:  # Airflow 3
    from airflow.sdk import DAG, CronDataIntervalTimetable
except ImportError:  # Airflow 2.9+
    from airflow import DAG
    from airflow.timetables.interval import CronDataIntervalTimetable

PROJECT = os.environ.get("MICROSEG_PROJECT_DIR", "/opt/microseg")
CONN_ID = os.environ.get("MICROSEG_SPARK_CONN_ID", "spark_default")
CONF = os.path.join(PROJECT, os.environ.get("MICROSEG_CONF", "conf/cluster.yaml"))
ENV_ARCHIVE = os.environ.get("MICROSEG_ENV_ARCHIVE", f"{PROJECT}/build/env.tar.gz")
DRIVER_PYTHON = os.environ.get("MICROSEG_DRIVER_PYTHON", f"{PROJECT}/.venv/bin/python")
DELTA_PACKAGE = os.environ.get("MICROSEG_DELTA_PACKAGE", "io.delta:delta-spark_4.1_2.13:4.4.0")
OVERRIDES = [arg for kv in os.environ.get("MICROSEG_SET", "").split() for arg in ("--set", kv)]
FORWARDED = ("MICROSEG_LAKE_ROOT", "MICROSEG_SOURCES_ROOT", "MLFLOW_TRACKING_URI")

# Stage (task id) -> job file; the profile stage's file is profiles.py (profile.py would hide Python's module).
STAGES = {
    "ingest": "ingest.py",
    "clean": "clean.py",
    "quality": "quality.py",
    "features": "features.py",
    "value": "value.py",
    "train": "train.py",
    "assign": "assign.py",
    "profile": "profiles.py",
}

# as_of is microseg's "last complete day". The timetable is named, not left to a cron string: Airflow 3 turns
# "@daily" into a CronTriggerTimetable whose logical date ({{ ds }}) is the run's own day, today. With a
# data-interval timetable the run that starts at midnight UTC covers the day that just ended, and the start of
# its data interval is that day (the same as {{ ds }} on a scheduled run); a manual run gets the last complete day.
AS_OF = "{{ data_interval_start | ds }}"

with DAG(
    dag_id="microseg_daily",
    description="Customer micro-segmentation: ingest >> clean >> quality >> features >> value >> train >> assign >> "
    "profile",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),  # later sources: "0 3 * * *" keeps the day
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # days run in order: a day's train compares with the champion the day before left
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        # Airflow 3 reads a multiplier (True would be 1: a constant delay); Airflow 2 reads it as on.
        "retry_exponential_backoff": 2.0,  # the delay doubles from 10 min (with jitter), at most an hour
        "max_retry_delay": timedelta(hours=1),
    },
    tags=["microseg"],
) as dag:
    previous = None
    for stage, job_file in STAGES.items():
        task = SparkSubmitOperator(
            task_id=stage,
            conn_id=CONN_ID,
            name=f"microseg-{stage}",
            application=f"{PROJECT}/jobs/{job_file}",
            application_args=["--conf", CONF, "--as-of", AS_OF, *OVERRIDES],
            packages=DELTA_PACKAGE,
            archives=f"{ENV_ARCHIVE}#environment",
            conf={
                "spark.pyspark.python": "./environment/bin/python",
                "spark.pyspark.driver.python": DRIVER_PYTHON,
                "spark.redaction.regex": "(?i)secret|password|token|access[.]?key|hash_key",
            },
            env_vars={
                "MICROSEG_HASH_KEY": "{{ var.value.microseg_secret_hash_key }}",
                **{name: os.environ[name] for name in FORWARDED if name in os.environ},
            },
        )
        if previous is not None:
            previous >> task
        previous = task
