"""The scheduler definitions in deploy/: the Airflow DAG loads in a real Airflow, the Databricks bundle fits the
Databricks CLI's bundle schema, and both pass the job files arguments microseg's CLI accepts.

Airflow does not share the project's environment (its pins would fight the project's), so it gets a virtualenv of
its own, made once and cached at $MICROSEG_AIRFLOW_VENV, else ~/.cache/microseg/airflow-venv-<hash of the pins>;
a marker written after a good install tells a finished venv from a half-built one (rebuilt). The first run
installs from PyPI (about a minute); later runs reuse it.
"""

from __future__ import annotations

import copy
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import best_match

from microseg.cli import build_parser

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DAG_FOLDER = REPO / "deploy" / "airflow"
BUNDLE = REPO / "deploy" / "databricks" / "databricks.yml"
BUNDLE_SCHEMA = REPO / "deploy" / "databricks" / "bundle_schema.json"

# Stage (task id) -> job file, in pipeline order.
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

# The newest Airflow and Spark provider on PyPI when written; they install on Python 3.11 without Airflow's
# constraints file (pip check clean). Change them together and the cached venv is rebuilt under a new name.
AIRFLOW_REQUIREMENTS = ["apache-airflow==3.3.2", "apache-airflow-providers-apache-spark==6.3.4"]
INSTALL_TIMEOUT = 1800  # s; pip's download and resolve on a slow machine, apart from the probe's own limit
PROBE_TIMEOUT = 300
READY = ".microseg-ready"
# What the probe gives the DAG as the worker's environment; the hash key is a sentinel the DAG must never read.
SITE = {
    "MICROSEG_PROJECT_DIR": str(REPO),
    "MICROSEG_SPARK_CONN_ID": "spark_microseg",
    "MICROSEG_ENV_ARCHIVE": "/shared/microseg/env-0123.tar.gz",
    "MICROSEG_LAKE_ROOT": "s3a://bucket/microseg",
    "MICROSEG_HASH_KEY": "sentinel-hash-key-must-not-be-parsed",
}


def _airflow_venv() -> Path:
    if os.environ.get("MICROSEG_AIRFLOW_VENV"):
        return Path(os.environ["MICROSEG_AIRFLOW_VENV"]).expanduser()
    key = "\n".join([*AIRFLOW_REQUIREMENTS, sys.version.split()[0], os.path.realpath(sys.base_prefix)])
    return Path.home() / ".cache" / "microseg" / f"airflow-venv-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The Python of a virtualenv with the pinned Airflow and Spark provider, built on first use and cached."""
    venv = _airflow_venv()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same venv: wait for it
        ready = venv / READY
        if not (ready.exists() and ready.read_text().splitlines() == AIRFLOW_REQUIREMENTS):
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
            done = subprocess.run([*pip, *AIRFLOW_REQUIREMENTS], capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT, check=False)  # fmt: skip
            assert done.returncode == 0, f"installing {AIRFLOW_REQUIREMENTS} failed:\n{done.stderr[-4000:]}"
            ready.write_text("\n".join(AIRFLOW_REQUIREMENTS) + "\n")
    return venv / "bin" / "python"


# Runs in the Airflow venv: loads the DAG folder as the DAG processor would (no metadata database needed),
# serializes the DAG as the scheduler stores it, and renders --as-of for a scheduled and a manual run.
PROBE = r"""
import json, sys
import pendulum
from airflow.models import DagBag
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import TimeRestriction

bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dags)}
dag = bag.dags.get("microseg_daily")
if dag is not None:
    serialized = DagSerialization.to_dict(dag)
    timetable = DagSerialization.from_dict(serialized).timetable  # the scheduler's side of it
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    manual_after = pendulum.datetime(2026, 3, 2, 0, 30, tz="UTC")
    runs = {
        "scheduled": (first.run_after, first.data_interval),
        "manual": (manual_after, timetable.infer_manual_data_interval(run_after=manual_after)),
    }
    env = dag.get_template_env()
    render = lambda args, interval: [env.from_string(a).render(data_interval_start=interval.start,
                                                                 ds=interval.start.strftime("%Y-%m-%d")) for a in args]
    out.update(
        timetable=type(dag.timetable).__name__,
        catchup=dag.catchup,
        max_active_runs=dag.max_active_runs,
        serialized=json.dumps(serialized, default=str),
        tasks=[
            {
                "task_id": t.task_id,
                "operator": type(t).__name__,
                "upstream": sorted(t.upstream_task_ids),
                "conn_id": t._conn_id,
                "application": t.application,
                "application_args": t.application_args,
                "rendered_args": {name: {"run_after": after.isoformat(), "args": render(t.application_args, iv)}
                                  for name, (after, iv) in runs.items()},
                "archives": t._archives,
                "packages": t.packages,
                "conf": t.conf,
                "env_vars": t.env_vars,
                "retries": t.retries,
                "retry_delay": t.retry_delay.total_seconds(),
                "retry_exponential_backoff": float(t.retry_exponential_backoff),
            }
            for t in dag.topological_sort()
        ],
    )
print("PROBE " + json.dumps(out))
"""


@pytest.fixture(scope="session")
def loaded_dag(airflow_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MICROSEG_", "MLFLOW_"))}
    env.pop("PYTHONPATH", None)
    env.update(SITE, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="True")
    done = subprocess.run([str(airflow_python), "-c", PROBE, str(DAG_FOLDER)], capture_output=True, text=True,
                          env=env, cwd=home, timeout=PROBE_TIMEOUT, check=False)  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, f"the DAG probe failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("PROBE "))


def test_the_dag_loads_with_one_spark_submit_task_per_stage_in_order(loaded_dag):
    assert loaded_dag["import_errors"] == {}
    assert loaded_dag["dag_ids"] == ["microseg_daily"]
    assert loaded_dag["timetable"] == "CronDataIntervalTimetable"
    assert loaded_dag["catchup"] is False and loaded_dag["max_active_runs"] == 1
    tasks = loaded_dag["tasks"]
    assert [t["task_id"] for t in tasks] == list(STAGES)
    previous: list[str] = []
    for task, job_file in zip(tasks, STAGES.values(), strict=True):
        assert task["operator"] == "SparkSubmitOperator"
        assert task["upstream"] == previous, task["task_id"]
        previous = [task["task_id"]]
        assert task["application"] == str(REPO / "jobs" / job_file) and Path(task["application"]).is_file()
        assert task["conn_id"] == SITE["MICROSEG_SPARK_CONN_ID"]
        assert task["retries"] >= 1 and task["retry_delay"] >= 60
        assert task["retry_exponential_backoff"] > 1  # Airflow 3 reads it as a multiplier: True (1.0) is constant
        assert task["archives"] == f"{SITE['MICROSEG_ENV_ARCHIVE']}#environment"
        assert task["conf"]["spark.pyspark.python"] == "./environment/bin/python"
        assert task["packages"] == "io.delta:delta-spark_4.1_2.13:4.4.0"


def test_the_dag_passes_the_last_complete_day_as_of_and_a_config_the_cli_accepts(loaded_dag):
    for task in loaded_dag["tasks"]:
        args = task["application_args"]
        assert args[args.index("--as-of") + 1] == "{{ data_interval_start | ds }}"
        assert Path(args[args.index("--conf") + 1]) == REPO / "conf" / "cluster.yaml"
        for run in task["rendered_args"].values():
            # A run that starts after midnight processes the day that just ended.
            day_before = (dt.datetime.fromisoformat(run["run_after"]) - dt.timedelta(days=1)).date()
            parsed = build_parser().parse_args(["run", *run["args"]])
            assert parsed.as_of == day_before and parsed.conf == str(REPO / "conf" / "cluster.yaml")


def test_the_dag_takes_the_hash_key_from_a_secret_at_run_time_only(loaded_dag):
    for task in loaded_dag["tasks"]:
        assert task["env_vars"]["MICROSEG_HASH_KEY"] == "{{ var.value.microseg_secret_hash_key }}"
        assert task["env_vars"]["MICROSEG_LAKE_ROOT"] == SITE["MICROSEG_LAKE_ROOT"]  # forwarded from the worker
        assert re.search(task["conf"]["spark.redaction.regex"], "spark.yarn.appMasterEnv.MICROSEG_HASH_KEY")
    assert SITE["MICROSEG_HASH_KEY"] not in loaded_dag["serialized"]  # the environment's key was never read


# The bundle schema's patterns use \p{L} and \p{N} (Go's regexp); Python's re spells them differently.
def _python_regex(pattern: str) -> str:
    return pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]").replace(r"\p{L}", r"[^\W\d_]").replace(r"\p{N}", r"\d")


def _pattern_keyword(validator, pattern, instance, schema):
    yield from Draft202012Validator.VALIDATORS["pattern"](validator, _python_regex(pattern), instance, schema)


BundleValidator = validators.extend(Draft202012Validator, {"pattern": _pattern_keyword})


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load(BUNDLE.read_text())


@pytest.fixture(scope="module")
def bundle_validator() -> Draft202012Validator:
    schema = json.loads(BUNDLE_SCHEMA.read_text())
    regex = FormatChecker()
    regex.checks("regex", raises=re.error)(lambda p: not isinstance(p, str) or bool(re.compile(_python_regex(p))))
    Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=regex).validate(schema)
    return BundleValidator(schema)


def test_the_bundle_fits_the_databricks_cli_schema(bundle, bundle_validator):
    error = best_match(bundle_validator.iter_errors(bundle))
    assert error is None, f"{error.json_path}: {error.message[:500]}"
    # The trimmed schema still rejects what the CLI rejects: an unknown key, a wrong type, a missing field.
    job = ["resources", "jobs", "microseg_daily"]
    for path, change in [
        ([*job, "tasks", 0], lambda node: node.update(job_cluster="microseg")),
        ([*job, "job_clusters", 0, "new_cluster"], lambda node: node.update(num_workers="two")),
        ([*job, "schedule"], lambda node: node.pop("timezone_id")),
    ]:
        broken = copy.deepcopy(bundle)
        node = broken
        for key in path:
            node = node[key]
        change(node)
        assert not bundle_validator.is_valid(broken), path


def test_the_bundle_runs_the_stages_in_order_on_the_job_cluster(bundle):
    (name, job), *others = bundle["resources"]["jobs"].items()
    assert name == "microseg_daily" and not others
    ((cluster_key, new_cluster),) = [(c["job_cluster_key"], c["new_cluster"]) for c in job["job_clusters"]]
    assert new_cluster["spark_version"] and job["schedule"]["timezone_id"] == "UTC"
    assert [t["task_key"] for t in job["tasks"]] == list(STAGES)
    wheels = [f["source"] for a in bundle["artifacts"].values() for f in a["files"]]
    synced = [(BUNDLE.parent / p).resolve() for p in bundle["sync"]["paths"]]
    previous = None
    for task, job_file in zip(job["tasks"], STAGES.values(), strict=True):
        assert task.get("depends_on", []) == ([{"task_key": previous}] if previous else []), task["task_key"]
        previous = task["task_key"]
        assert task["job_cluster_key"] == cluster_key and "new_cluster" not in task
        assert [lib["whl"] for lib in task["libraries"]] == wheels
        script = (BUNDLE.parent / task["spark_python_task"]["python_file"]).resolve()
        assert script == REPO / "jobs" / job_file and script.is_file()
        assert any(script.is_relative_to(root) for root in synced), f"{script} is not synced"


def test_the_bundle_passes_as_of_and_conf_as_job_parameters(bundle):
    job = bundle["resources"]["jobs"]["microseg_daily"]
    assert {p["name"]: p["default"] for p in job["parameters"]} == {"as_of": "${var.as_of}", "conf": "${var.conf}"}
    assert bundle["variables"]["as_of"]["default"] == ""
    conf = bundle["variables"]["conf"]["default"]
    assert (REPO / conf).is_file()
    assert REPO / "conf" in [(BUNDLE.parent / p).resolve() for p in bundle["sync"]["paths"]]
    for task in job["tasks"]:
        args = task["spark_python_task"]["parameters"]
        assert args[args.index("--as-of") + 1] == "{{job.parameters.as_of}}"
        assert args[args.index("--conf") + 1] == "${workspace.file_path}/{{job.parameters.conf}}"
        # The CLI parses them once the job parameters are substituted (a date, and the default "").
        given = [a.replace("{{job.parameters.as_of}}", "2025-12-31") for a in args]
        assert build_parser().parse_args(["run", *given]).as_of == dt.date(2025, 12, 31)


def test_the_cli_takes_an_empty_as_of_as_yesterday(bundle):
    args = bundle["resources"]["jobs"]["microseg_daily"]["tasks"][0]["spark_python_task"]["parameters"]
    given = [a.replace("{{job.parameters.as_of}}", "") for a in args]
    assert build_parser().parse_args(["run", *given]).as_of is None


def test_no_secret_is_written_in_the_deploy_files(bundle):
    secret_ref = re.compile(r"\{\{secrets/[\w.-]+/[\w.-]+\}\}")
    for cluster in bundle["resources"]["jobs"]["microseg_daily"]["job_clusters"]:
        env = cluster["new_cluster"]["spark_env_vars"]
        assert secret_ref.fullmatch(env["MICROSEG_HASH_KEY"])
        for name, value in env.items():
            if re.search("KEY|SECRET|TOKEN|PASSWORD", name):
                assert secret_ref.fullmatch(value), name
    key = os.environ.get("MICROSEG_HASH_KEY")
    for path in [BUNDLE, *DAG_FOLDER.glob("*.py")]:
        text = path.read_text()
        assert not key or key not in text, path
        assert not re.search(r"MICROSEG_HASH_KEY\s*[:=]\s*[\"']?(?!\{\{)[\w-]{8,}", text), path
