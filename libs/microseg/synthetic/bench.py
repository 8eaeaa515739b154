"""Benchmark: generate N customers, run every stage, and print seconds, Spark jobs and rows per second per stage.

For the train stage it also prints the sweep's candidates and seconds per candidate, and the
seconds spent refitting and in MLflow; ``--compare-sklearn`` times a plain scikit-learn KMeans
sweep on the same preprocessed samples and prints the ratio. ``--daily`` times a daily refresh
instead (``run_daily_benchmark``). ``--clv`` times the value models' fits on sufficient statistics
(``run_clv_benchmark``). Figures, not assertions: the same script on the same machine is
what makes two runs comparable.
"""

from __future__ import annotations

import datetime as dt
import resource
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from microseg.runtime import sparkops
from microseg.runtime.config import Config
from microseg.runtime.runlog import completed_stages
from microseg.stages import PipelineResult, run_pipeline
from microseg.synthetic.daily import next_day
from microseg.synthetic.datagen import generate


def _generated(spark: SparkSession, cfg: Config) -> tuple[dict, float]:
    """The bench's data generated into ``cfg.datagen.out``: its manifest, and the seconds it took."""
    started = time.perf_counter()
    manifest = generate(spark, cfg.datagen, cfg.datagen.out, store=cfg)
    return manifest, time.perf_counter() - started


def run_benchmark(
    spark: SparkSession, cfg: Config, customers: int, workdir: Path, compare_sklearn: bool = False
) -> str:
    """Run the whole pipeline on freshly generated data under ``workdir``; return a table of figures."""
    cfg = bench_config(cfg, customers, workdir)
    manifest, datagen_seconds = _generated(spark, cfg)
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


def bench_config(cfg: Config, customers: int, workdir: Path) -> Config:
    """``cfg`` with N customers generated to ``workdir``/data and a lake and MLflow store in ``workdir``/lake
    (``workdir`` wiped first)."""
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    data, lake = workdir / "data", workdir / "lake"
    return cfg.model_copy(
        update={
            "datagen": cfg.datagen.model_copy(update={"customers": customers, "out": str(data)}),
            "sources": cfg.sources.model_copy(update={"root": str(data)}),
            "lake": cfg.lake.model_copy(update={"root": str(lake)}),
            "mlflow": cfg.mlflow.model_copy(update={"tracking_uri": None, "artifact_location": None}),
        }
    )


def run_daily_benchmark(
    spark: SparkSession, cfg: Config, customers: int, workdir: Path, stages: list[str] | None = None
) -> str:
    """A daily refresh, timed against the first run: generate N customers and run every stage as of the data's
    end date; add one more day of source files (``daily.next_day``: about ``datagen.day_share`` of the rows, in
    new files) and run every stage as of that day; then run every stage again with no new files (as
    ``microseg run --rerun`` would: without it the run stops at once, every stage having completed). Returns
    the figures: per stage, seconds and Spark jobs of each run side by side, and each run's ratio to the first.
    ``stages``: run only these (all when None).
    """
    cfg = bench_config(cfg, customers, workdir)
    data = cfg.datagen.out
    manifest, datagen_seconds = _generated(spark, cfg)
    first = run_pipeline(spark, cfg, as_of=cfg.datagen.end_date, stages=stages)
    started = time.perf_counter()
    day = next_day(spark, cfg.datagen, data, store=cfg)["days"][-1]
    day_seconds = time.perf_counter() - started
    as_of = dt.date.fromisoformat(day["date"])
    refresh = run_pipeline(spark, cfg, as_of=as_of, stages=stages)
    done = completed_stages(spark, cfg, as_of)
    rerun = run_pipeline(spark, cfg, as_of=as_of, stages=stages)
    source_rows, day_rows = sum(manifest["rows"].values()), sum(day["rows"].values())
    runs = {"first": first, "refresh": refresh, "rerun": rerun}
    return "\n".join(
        [
            f"daily benchmark: {customers:,} customers, {source_rows:,} source rows, master "
            f"{spark.sparkContext.master} ({spark.sparkContext.defaultParallelism} cores)",
            f"datagen {datagen_seconds:.1f}s; next day {day['date']} {day_seconds:.1f}s: {day_rows:,} rows "
            f"({day_rows / source_rows:.2%}) in {len(day['files'])} new files, {day['new_customers']:,} new customers",
            f"first: as_of {cfg.datagen.end_date}; refresh: as_of {as_of} with the new day's files; rerun: as_of "
            f"{as_of} again, no new files ({len(done)} of {len(rerun.reports)} stages had completed for it, so "
            "`microseg run` without --rerun would stop there)",
            *comparison_table(runs),
        ]
    )


def comparison_table(runs: dict[str, PipelineResult]) -> list[str]:
    """Seconds and Spark jobs per stage for each run, side by side, and each later run's seconds over the
    first's, per stage, for ingest+clean+quality and in total."""
    names = list(runs)
    first = names[0]
    stages = [r.stage for r in runs[first].reports]
    groups = {s: [s] for s in stages}
    groups["ingest+clean+quality"] = [s for s in ("ingest", "clean", "quality") if s in stages]
    groups["total"] = stages

    def figures(name: str, members: list[str]) -> tuple[float, int | None]:
        reports = [r for r in runs[name].reports if r.stage in members]
        jobs = [r.jobs for r in reports]
        return sum(r.seconds for r in reports), None if None in jobs else sum(jobs)

    head = f"{'stage':<21}" + f" {first + ' s':>10} {'jobs':>6}"
    head += "".join(f" {n + ' s':>10} {'jobs':>6} {n + '/' + first:>14}" for n in names[1:])
    lines = [head]
    for group, members in groups.items():
        base, base_jobs = figures(first, members)
        line = f"{group:<21} {base:>10.1f} {_count(base_jobs):>6}"
        for name in names[1:]:
            seconds, jobs = figures(name, members)
            ratio = f"{seconds / base:.2f}" if base else "-"
            line += f" {seconds:>10.1f} {_count(jobs):>6} {ratio:>14}"
        lines.append(line)
    return lines


def _count(jobs: int | None) -> str:
    return "-" if jobs is None else f"{jobs:,}"  # None: not counted (Spark Connect)


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


def run_clv_benchmark(
    spark: SparkSession, customers: int, seed: int = 20050101, partitions: int | None = None, chunk: int = 250_000
) -> str:
    """Time the value models on N customers drawn from the BG/NBD and Gamma-Gamma processes at the paper's CDNOW
    parameters (observation 27-39 weeks, by day: T and t_x whole days, spend in cents).

    The customers are generated in Spark (``spark.range`` in ``partitions`` slices, ``mapInPandas`` simulating each
    slice in chunks from a seed of its own), so they never sit in the driver, and cached. Then, timed separately:
    the aggregation to distinct (x, t_x, T) with counts, and to distinct (x, m) pairs of the customers with repeat
    purchases (m in cents: the Gamma-Gamma likelihood does not separate x from m, so equal pairs are all that
    compresses), each collected as Arrow; the BG/NBD fit and the Gamma-Gamma fit on the driver. Prints customers,
    distinct tuples and pairs, seconds, the driver's CPU seconds (this Python process: on a shared machine the
    fits' CPU time is the figure that does not depend on the load) and Spark jobs of each step, the driver's peak
    RSS (the JVM and the Python workers are other processes), and the recovered parameters against the true ones.
    """
    import pandas as pd
    from pyspark import StorageLevel, TaskContext

    from microseg.value import clv, simulate, stats

    slices = partitions or max(sparkops.default_parallelism(spark), -(-customers // 1_000_000))
    day = 1 / 7

    def generate(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        rows = sum(len(batch) for batch in batches)
        rng = np.random.default_rng(np.random.SeedSequence([seed, TaskContext.get().partitionId()]))
        for start in range(0, rows, chunk):
            data = simulate.simulate_customers(min(chunk, rows - start), rng, resolution=day)
            data["m"] = np.round(data["m"], 2)
            yield pd.DataFrame(data)

    group = f"microseg-bench-clv-{seed}"
    lines = [
        f"clv benchmark: {customers:,} customers in {slices} slices, master {spark.sparkContext.master} "
        f"({sparkops.default_parallelism(spark)} cores)"
    ]
    figures: list[tuple[str, float, float, int | None]] = []

    def timed(step: str, work: Callable[[], Any]) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        with sparkops.job_group(spark, f"{group}-{step}", f"clv benchmark: {step}"):
            result = work()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        figures.append((step, seconds, cpu, sparkops.jobs_in_group(spark, f"{group}-{step}")))
        return result

    simulated = spark.range(0, customers, 1, slices).mapInPandas(generate, "x long, t_x double, T double, m double")
    simulated = simulated.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        timed("simulate+cache", simulated.count)
        tuples = timed("aggregate (x, t_x, T)", lambda: stats.tuple_counts(simulated))
        pairs = timed("aggregate (x, m)", lambda: stats.spend_pairs(simulated))
    finally:
        simulated.unpersist()
    bg = timed("fit BG/NBD", lambda: clv.fit_bg_nbd(tuples.x, tuples.t_x, tuples.T, tuples.weight))
    gg = timed("fit Gamma-Gamma", lambda: clv.fit_gamma_gamma(pairs.x, pairs.m, pairs.weight))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lines += [
        f"distinct (x, t_x, T): {len(tuples.x):,} for {tuples.weight.sum():,.0f} customers; distinct (x, m): "
        f"{len(pairs.x):,} for {pairs.weight.sum():,.0f} customers with repeat purchases",
        f"{'step':<24} {'seconds':>9} {'driver CPU s':>13} {'jobs':>6}",
        *(f"{step:<24} {seconds:>9.2f} {cpu:>13.2f} {_count(jobs):>6}" for step, seconds, cpu, jobs in figures),
        f"peak driver RSS {rss:,.0f} MiB; BG/NBD {bg.iterations} iterations, converged {bg.converged}; "
        f"Gamma-Gamma {gg.iterations} iterations, converged {gg.converged}",
        f"{'parameter':<10} {'true':>9} {'fitted':>10} {'std err':>9} {'rel diff':>9}",
    ]
    true = simulate.BG_NBD_CDNOW | simulate.GAMMA_GAMMA_CDNOW
    fitted, errors = bg.params | gg.params, bg.std_errors | gg.std_errors
    for name, value in fitted.items():
        lines.append(
            f"{name:<10} {true[name]:>9.4f} {value:>10.4f} {errors[name]:>9.4f} {value / true[name] - 1:>+9.2%}"
        )
    return "\n".join(lines)
