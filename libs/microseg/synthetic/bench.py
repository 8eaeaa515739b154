"""Benchmark: generate N customers, run every stage, and print seconds, Spark jobs and rows per second per stage.

For the train stage it also prints the sweep's candidates and seconds per candidate, and the
seconds spent refitting and in MLflow; ``--compare-sklearn`` times a plain scikit-learn KMeans
sweep on the same preprocessed samples and prints the ratio. Figures, not assertions: the same
script on the same machine is what makes two runs comparable.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession

from microseg.runtime.config import Config
from microseg.stages import PipelineResult, run_pipeline
from microseg.synthetic.datagen import generate


def run_benchmark(
    spark: SparkSession, cfg: Config, customers: int, workdir: Path, compare_sklearn: bool = False
) -> str:
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
    manifest = generate(spark, cfg.datagen, str(data), store=cfg)
    datagen_seconds = time.perf_counter() - started
    result = run_pipeline(spark, cfg, as_of=cfg.datagen.end_date)
    source_rows = sum(manifest["rows"].values())
    lines = [
        f"benchmark: {customers:,} customers, {source_rows:,} source rows, master {spark.sparkContext.master} "
        f"({spark.sparkContext.defaultParallelism} cores)",
        *stage_table(result, datagen_seconds, source_rows),
        *train_lines(result),
    ]
    if compare_sklearn and result.report("train"):
        lines += compare_with_sklearn(spark, cfg, result)
    return "\n".join(lines)


def stage_table(result: PipelineResult, datagen_seconds: float, source_rows: int) -> list[str]:
    lines = [
        f"{'stage':<10} {'seconds':>9} {'jobs':>6} {'rows':>13} {'rows/s':>11}",
        f"{'datagen':<10} {datagen_seconds:>9.1f} {'':>6} {source_rows:>13,} {source_rows / datagen_seconds:>11,.0f}",
    ]
    total, jobs = datagen_seconds, 0
    for report in result.reports:
        rows = sum((e.rows_in or e.rows_written or 0) for e in report.entries)
        total, jobs = total + report.seconds, jobs + report.jobs
        rate = rows / report.seconds if report.seconds else 0.0
        lines.append(f"{report.stage:<10} {report.seconds:>9.1f} {report.jobs:>6} {rows:>13,} {rate:>11,.0f}")
    lines.append(f"{'total':<10} {total:>9.1f} {jobs:>6}")
    return lines


def train_lines(result: PipelineResult) -> list[str]:
    train = result.report("train")
    if train is None:
        return []
    models, swept = train.info["models"], train.info["sweep"]
    per_candidate = swept["candidate_seconds"] or [0.0]
    refit = sum(m["fit_seconds"] for m in models)
    mlflow_seconds = sum(m["mlflow_seconds"] for m in models)
    return [
        f"train: {len(models)} models, {swept['candidates']} candidates; sweep {swept['seconds']:.1f}s wall "
        f"(one Spark job), per candidate median {statistics.median(per_candidate):.3f}s, max {max(per_candidate):.3f}s "
        f"(fit, stability fit and metrics); refits {refit:.1f}s; MLflow logging and registry {mlflow_seconds:.1f}s; "
        f"rest {train.seconds - swept['seconds'] - refit - mlflow_seconds:.1f}s",
    ]


def compare_with_sklearn(spark: SparkSession, cfg: Config, result: PipelineResult) -> list[str]:
    """A plain scikit-learn KMeans sweep (fit, stability fit, exact silhouette_score) on the same samples."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score
    from threadpoolctl import threadpool_limits

    from microseg.segmentation.stage import sweep_inputs

    tasks, samples = sweep_inputs(spark, cfg, result.run.as_of)
    kmeans = [t for t in tasks if t.algorithm == "kmeans"]
    train = cfg.train
    plain = []
    with threadpool_limits(limits=1):
        for task in kmeans:
            x = samples[task.key].scaled
            started = time.perf_counter()
            labels = KMeans(task.k, n_init=1, max_iter=train.max_iter, random_state=train.seed).fit_predict(x)
            keep = np.random.default_rng(train.seed + 1).random(len(x)) < train.stability_fraction
            other = KMeans(task.k, n_init=1, max_iter=train.max_iter, random_state=train.seed + 1).fit(x[keep])
            adjusted_rand_score(labels, other.predict(x))
            silhouette_score(x, labels, metric="sqeuclidean")
            plain.append(time.perf_counter() - started)
    models = result.report("train").info["models"]
    ours = [
        c["seconds"] for m in models for c in m["candidates"] if c["algorithm"] == "kmeans" and c["seconds"] is not None
    ]
    if not plain or not ours:
        return ["compare-sklearn: no KMeans candidates to compare"]
    return [
        f"compare-sklearn: {len(plain)} KMeans candidates on the same preprocessed samples "
        f"(at most {train.sweep_sample:,} rows each), one thread",
        f"  plain scikit-learn (fit, stability fit, ARI, silhouette_score O(n^2)): {sum(plain):.2f}s, "
        f"median {statistics.median(plain):.4f}s per candidate",
        f"  microseg sweep tasks (same work, silhouette O(n·k·d)):                 {sum(ours):.2f}s, "
        f"median {statistics.median(ours):.4f}s per candidate",
        f"  ratio microseg / plain, per candidate (median): {statistics.median(ours) / statistics.median(plain):.2f}",
    ]
