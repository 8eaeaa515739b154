"""Fault tests: real `microseg run` processes on tiny generated data, interrupted or raced.

Each test starts the CLI in processes of its own (``microseg_process``), as a scheduler would, on a data set
made once per test session by the tests' Spark session (``fault_data``): the fewest customers datagen makes,
over a few months, so that a run of the first stages costs little more than its JVM's start.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import microseg
from microseg.runtime.config import DatagenConfig
from microseg.synthetic.datagen import generate

REPO = Path(__file__).resolve().parents[2]
AS_OF = dt.date(2025, 12, 31)
# tests/conftest.py's TEST_SETTINGS as `microseg run --set` takes them, with a small driver: a fault test runs
# several drivers at once.
RUN_SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
    "spark.settings.spark.driver.memory=1g",
    "spark.settings.spark.sql.codegen.wholeStage='false'",
    "spark.settings.spark.sql.codegen.factoryMode='NO_CODEGEN'",
]


@pytest.fixture(scope="session")
def fault_data(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """100 generated customers with three months of activity up to AS_OF, and the manifest."""
    data = tmp_path_factory.mktemp("fault-data")
    spec = DatagenConfig(customers=100, seed=3, partitions=1, start_date=dt.date(2025, 10, 1), end_date=AS_OF)
    return data, generate(spark, spec, str(data))


@pytest.fixture(scope="session")
def microseg_process() -> Callable[..., subprocess.Popen]:
    """``microseg_process(*args, log=path)``: `microseg <args>` started in a process of its own (this checkout's
    package, the tests' settings and HMAC key), its output to ``log``."""
    libs = str(Path(microseg.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join([libs, os.environ.get("PYTHONPATH", "")]),
    }

    def start(*args: str, log: Path) -> subprocess.Popen:
        command = [sys.executable, "-c", "import sys; from microseg.cli import main; sys.exit(main(sys.argv[1:]))",
                   args[0], "--conf", str(REPO / "conf" / "local.yaml"), *[f"--set={s}" for s in RUN_SETTINGS],
                   *args[1:]]  # fmt: skip
        with open(log, "w") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    return start
