"""Ingest stage: every source of the mapping into bronze.<source> with ingest metadata."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from microseg import tables
from microseg.config import Config
from microseg.runlog import Entry, RunContext, StageReport
from microseg.sources import load_mapping, read_source


def run_ingest(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Read each source with its explicit schema and write it whole to bronze (a full refresh per run)."""
    report = StageReport("ingest")
    for name, spec in load_mapping(cfg).items():
        raw = read_source(spark, cfg, spec).withColumns(
            {"_ingested_at": F.lit(run.started_at).cast("timestamp"), "_batch_id": F.lit(run.run_id)}
        )
        tables.overwrite(raw, cfg, f"bronze.{name}")
        rows = tables.read(spark, cfg, f"bronze.{name}").count()
        report.entries.append(Entry(source=name, rows_in=rows, rows_written=rows, rows_quarantined=0))
    return report
