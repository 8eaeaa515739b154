"""Generated data and a lake up to features, made once per run and shared by the integration modules.

Datagen and the ingest, clean, quality and features stages are most of what a pipeline run costs on
this data, and none of them reads the train settings in which test_pipeline_e2e and test_segmentation
differ. So both start from one data set and one featured lake: each module trains, assigns and
profiles on a copy of its own (``copy_lake``), whose MLflow database and artifacts its first train
creates, so its assertions about runs, versions, aliases and history see only its own work.
test_jdbc_crm loads its PostgreSQL table from the same generated CRM file.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from microseg.runtime.config import DatagenConfig
from microseg.stages import run_pipeline
from microseg.synthetic.datagen import generate

CUSTOMERS = 3000
SEED = 5
# One lapsed customer in ten comes back with a burst of big orders on the day after AS_OF (datagen's
# end_date): test_segmentation follows these movers into its next day's snapshot; at AS_OF (and any
# date before) the burst is in the future and changes nothing.
MOVERS, MOVER_DAYS = 0.1, 1
AS_OF = dt.date(2025, 12, 31)
SHARED_STAGES = ["ingest", "clean", "quality", "features"]


@pytest.fixture(scope="session")
def generated(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The shared source folder (3,000 customers, planted groups and movers) and its manifest."""
    data = tmp_path_factory.mktemp("generated")
    spec = DatagenConfig(customers=CUSTOMERS, seed=SEED, partitions=2, movers=MOVERS, mover_days=MOVER_DAYS)
    manifest = generate(spark, spec, str(data))
    assert manifest["customers"] == CUSTOMERS
    return data, manifest


@pytest.fixture(scope="session")
def featured_lake(spark, generated, make_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake after ingest, clean, quality and features as of AS_OF on the shared data; read it through a copy."""
    data, _ = generated
    lake = tmp_path_factory.mktemp("featured") / "lake"
    cfg = make_config(f"sources.root={data}", lake=lake)
    run_pipeline(spark, cfg, as_of=AS_OF, stages=SHARED_STAGES)
    return lake


@pytest.fixture(scope="session")
def copy_lake(featured_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``copy_lake(name)``: a fresh copy of the featured lake (Delta tables are path-based and relative)."""

    def copy(name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "lake"
        shutil.copytree(featured_lake, target)
        return target

    return copy
