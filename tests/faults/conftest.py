"""Fault tests: real `microseg` processes on tiny generated data, interrupted or raced.

Each test starts the CLI in processes of its own (``processes.start_microseg``), as a scheduler would. The
kill-and-restart chain (a dozen processes, mostly JVM starts) runs in the background from the end of
collection when test_kill_restart.py is selected; the fault tests run after the others (tests/conftest.py),
and that one waits for the chain. ``fault_data`` is a data set made once per session by the tests' Spark
session: the fewest customers datagen makes, over a few months, so that a run of the first stages costs
little more than its JVM's start.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from processes import AS_OF, KillChain, start_microseg

from microseg.runtime.config import DatagenConfig
from microseg.synthetic.datagen import generate

HERE = Path(__file__).resolve().parent
_CHAIN: KillChain | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the kill chain if test_kill_restart.py is to run."""
    global _CHAIN
    if session.config.option.collectonly or not any(i.path == HERE / "test_kill_restart.py" for i in session.items):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    root = factory.mktemp("kill-restart") if factory else Path(tempfile.mkdtemp(prefix="microseg-kill-restart-"))
    _CHAIN = KillChain(root)
    _CHAIN.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _CHAIN is not None:
        _CHAIN.stop()


@pytest.fixture(scope="session")
def kill_chain() -> KillChain:
    """The chain started after collection."""
    assert _CHAIN is not None, "the kill chain did not start"
    return _CHAIN


@pytest.fixture(scope="session")
def fault_data(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """100 generated customers with three months of activity up to AS_OF, and the manifest."""
    data = tmp_path_factory.mktemp("fault-data")
    end = dt.date.fromisoformat(AS_OF)
    spec = DatagenConfig(customers=100, seed=3, partitions=1, start_date=dt.date(2025, 10, 1), end_date=end)
    return data, generate(spark, spec, str(data))


@pytest.fixture(scope="session")
def microseg_process() -> Callable[..., subprocess.Popen]:
    """``microseg_process(*args, log=path, extra_env=None)``: ``processes.start_microseg``."""
    return start_microseg
