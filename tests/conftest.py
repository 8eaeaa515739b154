"""Shared fixtures: one SparkSession for the whole run, and configs pointing at temporary lakes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from microseg.runtime.config import Config
from microseg.runtime.loader import load_config
from microseg.runtime.session import build_spark

REPO = Path(__file__).resolve().parents[1]
TEST_HASH_KEY = "test-key-not-a-secret-0123456789"

# Set before any test runs; a test that needs the key missing removes it with monkeypatch.
os.environ.setdefault("MICROSEG_HASH_KEY", TEST_HASH_KEY)

# A short boosting and baseline: the churn classifiers' Spark jobs are the value stage's cost on test data
# (3,000 customers: 146 jobs and 25 s with these, 265 jobs and 71 s with the defaults of 20 rounds and 50).
CHURN_SETTINGS = ["value.churn.max_iter=4", "value.churn.baseline_max_iter=10", "value.churn.max_depth=3"]
TEST_SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
    "datagen.partitions=2",
    "run.as_of=2025-12-31",  # the generated data's end date; the default (yesterday) follows the clock
    *CHURN_SETTINGS,
    # Test data is tiny and the feature plans are large: compiling generated code (Janino) for each query
    # cost more than running its rows interpreted (the JVM's CPU time on the heaviest unit tests fell by a
    # fifth to a third). Results are the same by Spark's contract; the cluster test and the notebook run
    # with Spark's defaults, so code generation stays exercised end to end.
    "spark.settings.spark.sql.codegen.wholeStage='false'",
    "spark.settings.spark.sql.codegen.factoryMode='NO_CODEGEN'",
]


# Tests of work started in the background after collection run last, in this order (a stable sort: the others
# keep theirs), to find that work done: tests/faults (its kill chain), then tests/cluster (its cluster run).
LAST = {"faults": 1, "cluster": 2}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        parts = item.path.relative_to(REPO / "tests").parts if item.path.is_relative_to(REPO / "tests") else ()
        return LAST.get(parts[0], 0) if parts else 0

    items.sort(key=rank)


@pytest.fixture(scope="session")
def make_config(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Config]:
    """Config for a test: conf/local.yaml with small Spark settings, a fresh lake, and extra overrides."""

    def make(*overrides: str, lake: Path | None = None) -> Config:
        lake = lake or tmp_path_factory.mktemp("lake")
        return load_config(
            REPO / "conf" / "local.yaml",
            [*TEST_SETTINGS, f"lake.root={lake}", *overrides],
        )

    return make


@pytest.fixture(scope="session")
def spark(make_config: Callable[..., Config]):
    cfg = make_config()
    # One session serves every test, the JDBC source test too: the JDBC driver joins Delta from the start.
    packages = [*cfg.spark.packages, *cfg.spark.packages_when["jdbc"]]
    session = build_spark(cfg.model_copy(update={"spark": cfg.spark.model_copy(update={"packages": packages})}))
    yield session
    session.stop()
