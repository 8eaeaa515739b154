"""The cluster run goes in the background from the start of the session; the cluster tests run last.

A run on the standalone cluster (pack the environment, start a master and a worker, submit a probe,
generate data, submit the pipeline) takes minutes, mostly waiting on process starts, job scheduling
and executors, little of it on this process's Spark session. So once collection has chosen a cluster
test, a thread starts those steps (``cluster_run``), the unit and integration tests run meanwhile, and
the cluster tests, moved to the end of the session (tests/conftest.py), wait for the steps they check
(each with a limit of its own, generous for a busy machine) and then read the outputs. The cluster and
anything still running are stopped when the session ends, also when it is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_utils import (
    SPARK_HOME,
    BackgroundRun,
    StandaloneCluster,
    Step,
    java_available,
    spark_env,
    wait_until,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DELTA_PACKAGE = "io.delta:delta-spark_4.1_2.13:4.4.0"  # 4.4.1 jars are not on Maven Central
CUSTOMERS = 300

# Generous limits, each for one step: on a loaded 2-core machine the ingest stage of a 2,000-customer
# run alone once took 193 s. Slow is fine, red should mean broken.
PACK_TIMEOUT = 1200
CLUSTER_START_TIMEOUT = 300
PROBE_TIMEOUT = 600
DATAGEN_TIMEOUT = 600
SUBMIT_TIMEOUT = 1200
KILL_TIMEOUT = 900  # the executor-kill job, all in: submit, wait for its gated tasks, kill, relaunch, finish
GATE_WAIT = 400  # of which: until a task of its last stage waits at the gate
RELAUNCH_WAIT = 300  # of which: from the kill until the worker runs a new executor for the job
# How long a test waits for the whole background run to reach its step (every limit above, in a row).
WAIT_TIMEOUT = PACK_TIMEOUT + CLUSTER_START_TIMEOUT + PROBE_TIMEOUT + DATAGEN_TIMEOUT + SUBMIT_TIMEOUT + KILL_TIMEOUT

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

# The pipeline's settings on the cluster. The smallest run that still trains, registers and assigns on
# the cluster: one k-means candidate (k = 2) for one model over everyone (below min_macro_size, 500 by
# default, a model is one segment and nothing is swept). Sweep and selection are tested in tests/unit
# and tests/integration.
PIPELINE_SETTINGS = [
    "run.as_of=2025-12-31",  # the generated data's end date
    "spark.shuffle_partitions=2",  # the worker's 2 cores
    "train.by_macro=false",
    "train.layers.engagement=null",
    "train.layers.preference=null",
    "train.layers.value.algorithms=[kmeans]",
    "train.k_min=2",
    "train.k_max=2",
    "train.min_macro_size=100",
]


class ClusterRun(BackgroundRun):
    """The background steps, one after another: pack the environment, start the cluster, submit the probe,
    generate the data, submit the pipeline, submit a job and kill its executor mid-job. A step that needs an
    earlier one fails if that one did."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.cluster = StandaloneCluster(root / "standalone")
        self.data, self.lake = root / "data", root / "lake"
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.archive: Path | None = None
        self.kill_dir = root / "executor_kill"
        self.kill: dict = {}  # what the executor_kill step did: app, executor and pid killed, the new executor
        for name in ("pack", "cluster", "probe", "datagen", "pipeline", "executor_kill"):
            self.add(name, getattr(self, f"_{name}"))

    def stop(self, timeout: float = 60) -> None:
        super().stop(timeout)
        self.cluster.stop()

    def finished(self, name: str) -> Step:
        """Wait for step ``name`` and assert it exited 0; the assertion shows its log and the cluster's."""
        step = self.wait(name, WAIT_TIMEOUT)
        assert step.code == 0, f"{step.describe()}\n{self.cluster.log_tails()}"
        return step

    def _require(self, *names: str) -> None:
        """Raise unless the steps ``names`` are over and went well (a later step cannot run without them)."""
        for name in names:
            try:
                step = self.wait(name, 0)
            except Exception as exc:
                raise RuntimeError(f"step {name} did not go well: {exc}") from exc
            if step.code not in (None, 0):
                raise RuntimeError(f"step {name} did not go well: {step.describe()}")

    def submit(
        self, step: Step, *args: str, timeout: float, during: Callable[[subprocess.Popen], None] | None = None
    ) -> None:
        cmd = [
            str(SPARK_HOME / "bin" / "spark-submit"),
            "--master", self.cluster.url,
            "--deploy-mode", "client",
            "--archives", f"{self.archive}#environment",
            "--conf", "spark.pyspark.python=./environment/bin/python",
            "--conf", f"spark.pyspark.driver.python={sys.executable}",
            "--conf", "spark.executor.memory=1g",
            *args,
        ]  # fmt: skip
        env = spark_env(MICROSEG_HASH_KEY=os.environ["MICROSEG_HASH_KEY"])
        self.command(step, cmd, self.root / f"{step.name}.log", timeout, during=during, cwd=REPO, env=env)

    def _pack(self, step: Step) -> None:
        """build/env-<hash>.tar.gz, made once and reused while pyproject.toml, libs/ and the venv are unchanged."""
        log = self.root / "pack.log"
        self.command(step, ["bash", str(REPO / "scripts" / "pack_env.sh"), sys.prefix], log, PACK_TIMEOUT, cwd=REPO)
        if step.code == 0:
            self.archive = REPO / log.read_text().strip().splitlines()[-1]

    def _cluster(self, step: Step) -> None:
        self.cluster.start(timeout=CLUSTER_START_TIMEOUT)

    def _probe(self, step: Step) -> None:
        self._require("pack", "cluster")
        probe = self.root / "probe_env.py"
        probe.write_text(PROBE)
        self.submit(step, str(probe), timeout=PROBE_TIMEOUT)

    def _datagen(self, step: Step) -> None:
        cmd = [
            str(Path(sys.prefix) / "bin" / "microseg"), "datagen", "--customers", str(CUSTOMERS),
            "--out", str(self.data), "--set", "datagen.partitions=2", "--set", "spark.master=local[2]",
            "--set", "spark.log_level=ERROR",
        ]  # fmt: skip
        self.command(step, cmd, self.root / "datagen.log", DATAGEN_TIMEOUT, cwd=REPO, env=spark_env())

    def _pipeline(self, step: Step) -> None:
        self._require("pack", "cluster", "datagen")
        settings = [
            f"lake.root={self.lake}",
            f"sources.root={self.data}",
            f"mlflow.tracking_uri={self.tracking_uri}",
            *PIPELINE_SETTINGS,
        ]
        args = ["--packages", DELTA_PACKAGE, str(REPO / "jobs" / "pipeline.py"), "--conf", "conf/cluster.yaml"]
        self.submit(step, *args, *(f"--set={s}" for s in settings), timeout=SUBMIT_TIMEOUT)

    def _executor_kill(self, step: Step) -> None:
        """tests/cluster/executor_kill_job.py on the generated data; its executor is killed while the tasks of
        the job's last stage wait at the job's gate (they read the map outputs that die with it)."""
        self._require("pack", "cluster", "datagen")
        gate, events = self.kill_dir / "gate", self.kill_dir / "events"
        gate.mkdir(parents=True)
        events.mkdir()
        args = [
            "--conf", "spark.ui.enabled=false",
            "--conf", "spark.sql.shuffle.partitions=2",
            "--conf", "spark.eventLog.enabled=true",
            "--conf", f"spark.eventLog.dir=file:{events}",
            "--conf", "spark.eventLog.compress=false",
            "--conf", "spark.eventLog.rolling.enabled=false",
            str(HERE / "executor_kill_job.py"), str(self.data), str(self.kill_dir / "result"), str(gate),
        ]  # fmt: skip
        self.submit(step, *args, timeout=KILL_TIMEOUT, during=lambda proc: self._kill_at_gate(proc, gate))

    def _kill_at_gate(self, proc: subprocess.Popen, gate: Path) -> None:
        """Once a task waits at ``gate``: SIGKILL its executor, wait for the worker's new one, release the gate."""

        def waiting() -> list[Path]:
            if proc.poll() is not None:
                raise RuntimeError(f"the job exited ({proc.returncode}) before a task of its last stage waited")
            return sorted(gate.glob("started-*"))

        markers = wait_until(waiting, GATE_WAIT, "a task of the job's last stage to wait at the gate")
        folder = Path(markers[0].read_text())  # the executor's folder: <work>/<app id>/<executor id>
        app_id, executor_id = folder.parent.name, folder.name
        pid = self.cluster.kill_executor(app_id, executor_id)
        killed = time.monotonic()

        def relaunched() -> dict[str, int]:
            if proc.poll() is not None:
                raise RuntimeError(f"the job exited ({proc.returncode}) before the worker relaunched its executor")
            return {e: p for (a, e), p in self.cluster.executors().items() if a == app_id and e != executor_id}

        new = wait_until(relaunched, RELAUNCH_WAIT, f"the worker to launch a new executor for {app_id}")
        self.kill.update(
            app_id=app_id,
            executor_id=executor_id,
            pid=pid,
            folder=folder,
            waiting_tasks=len(markers),
            new_executors=new,
            relaunch_seconds=time.monotonic() - killed,
        )
        (gate / "release").touch()


_RUN: ClusterRun | None = None


def _is_cluster_test(item: pytest.Item) -> bool:
    return item.path.is_relative_to(HERE)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the background run if a cluster test is to run and Java is there (else the tests skip)."""
    global _RUN
    if session.config.option.collectonly or not java_available():
        return
    if not any(_is_cluster_test(item) for item in session.items):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    root = factory.mktemp("cluster-run") if factory else Path(tempfile.mkdtemp(prefix="microseg-cluster-run-"))
    _RUN = ClusterRun(root)
    _RUN.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _RUN is not None:
        _RUN.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _RUN is not None:
        terminalreporter.write_line(f"cluster run in the background ({_RUN.root}): {_RUN.timings()}")
        if kill := _RUN.kill:
            terminalreporter.write_line(
                f"executor kill: {kill['app_id']} executor {kill['executor_id']} (pid {kill['pid']}) killed with "
                f"{kill['waiting_tasks']} task(s) at the gate; new executor(s) {sorted(kill['new_executors'])} "
                f"{kill['relaunch_seconds']:.1f} s later"
            )


@pytest.fixture(scope="session")
def cluster_run() -> ClusterRun:
    """The background run started after collection."""
    assert _RUN is not None, "the cluster run did not start (is Java there?)"
    return _RUN
