"""Benchmark: generate N customers, run every stage, and report seconds and rows per second per stage."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pyspark.sql import SparkSession

from microseg.config import Config
from microseg.datagen import generate
from microseg.pipeline import run_pipeline


def run_benchmark(spark: SparkSession, cfg: Config, customers: int, workdir: Path) -> str:
    """Run the whole pipeline on freshly generated data under ``workdir``; return a table of figures."""
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    data, lake = workdir / "data", workdir / "lake"
    cfg = cfg.model_copy(
        update={
            "datagen": cfg.datagen.model_copy(update={"customers": customers, "out": str(data)}),
            "sources": cfg.sources.model_copy(update={"root": str(data)}),
            "lake": cfg.lake.model_copy(update={"root": str(lake)}),
            "mlflow": cfg.mlflow.model_copy(update={"tracking_uri": None, "artifact_location": None}),
        }
    )
    started = time.perf_counter()
    manifest = generate(spark, cfg.datagen, str(data))
    datagen_seconds = time.perf_counter() - started
    result = run_pipeline(spark, cfg, progress=lambda _: None)
    cores = spark.sparkContext.defaultParallelism
    lines = [
        f"benchmark: {customers:,} customers, {sum(manifest['rows'].values()):,} source rows, "
        f"master {spark.sparkContext.master} ({cores} cores)",
        f"{'stage':<10} {'seconds':>9} {'rows':>13} {'rows/s':>11}",
        f"{'datagen':<10} {datagen_seconds:>9.1f} {sum(manifest['rows'].values()):>13,} "
        f"{sum(manifest['rows'].values()) / datagen_seconds:>11,.0f}",
    ]
    total = datagen_seconds
    for report in result.reports:
        rows = sum((e.rows_in or e.rows_written or 0) for e in report.entries)
        total += report.seconds
        rate = rows / report.seconds if report.seconds else 0.0
        lines.append(f"{report.stage:<10} {report.seconds:>9.1f} {rows:>13,} {rate:>11,.0f}")
    lines.append(f"{'total':<10} {total:>9.1f}")
    return "\n".join(lines)
