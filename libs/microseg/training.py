"""Train stage: per layer and macro segment, sweep algorithms and k, choose, refit, track, register.

The sweep measures every (layer, macro, algorithm, k) candidate with scikit-learn on a bounded
sample, all in one Spark job (``sweep.py``); the chosen candidate is refitted with MLlib on all
rows (or ``fit_sample``), and that PipelineModel is what the registry serves.

MLflow layout: one parent run per training run; per (layer, macro) a child run per candidate
(created and filled with batch calls) and a child run for the final model (its artifacts: the
candidates table and k-selection curves, centroids, sizes, the stable-id mapping). The model is
registered as ``microseg-<layer>-<macro>``; the alias ``champion`` moves to it only when it passes
the selection rule and is at least as good as the champion on today's data (or
``train.force_promote``); the former champion keeps the alias ``previous``. A champion that cannot
be scored keeps its alias: promotion fails closed.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.spark
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from microseg import sweep, tables, tracking
from microseg.catalog import Catalog, load_catalog
from microseg.config import Config, TrainConfig
from microseg.errors import ConfigError, ModelMissingError
from microseg.models import (
    ALL,
    CLUSTER,
    RAW,
    Candidate,
    choose,
    clip_limits,
    clustering_column,
    full_pipeline,
    match_segment_ids,
    model_name,
    passes,
    rank,
    scaler_of,
    single_segment_pipeline,
)
from microseg.runlog import Entry, RunContext, StageReport
from microseg.sparkops import cached, described

CHAMPION, PREVIOUS = "champion", "previous"
log = logging.getLogger(__name__)


def snapshot(spark: SparkSession, cfg: Config, as_of: object) -> DataFrame:
    """customer_id, macro_segment and every layer's features (as doubles) of one snapshot."""
    columns = sorted({f for layer in cfg.train.active_layers.values() for f in layer.features})
    features = tables.read(spark, cfg, "gold.customer_features").where(F.col("as_of") == F.lit(as_of))
    return features.select("customer_id", "macro_segment", *[F.col(c).cast("double") for c in columns])


def macros_of(layer: str, cfg: Config, present: list[str]) -> list[str]:
    if not cfg.train.by_macro:
        return [ALL]
    wanted = cfg.train.active_layers[layer].macros
    return [m for m in present if wanted is None or m in wanted]


def rows_of(data: DataFrame, macro: str) -> DataFrame:
    return data if macro == ALL else data.where(F.col("macro_segment") == macro)


def _check_features(cfg: Config, catalog: Catalog) -> None:
    for layer, spec in cfg.train.active_layers.items():
        unknown = [f for f in spec.features if f not in catalog.names]
        if unknown:
            raise ConfigError(f"train.layers.{layer}.features names {unknown}, not in the feature catalog")


@dataclass(frozen=True)
class Plan:
    """One model to train: a layer within a macro segment, on the features somebody in it has."""

    layer: str
    macro: str
    features: list[str]
    rows: int

    @property
    def key(self) -> tuple[str, str]:
        return self.layer, self.macro

    def sweeps(self, train: TrainConfig) -> bool:
        return self.rows >= train.min_macro_size and bool(self.features)


def macro_stats(data: DataFrame, cfg: Config) -> dict[str, dict]:
    """Per macro segment (and ``all``): rows, and how many rows have each feature. One Spark job."""
    columns = [c for c in data.columns if c not in ("customer_id", "macro_segment")]
    grouped = data.groupBy("macro_segment").agg(F.count("*").alias("_rows"), *[F.count(c).alias(c) for c in columns])
    stats = {r["macro_segment"]: {"rows": r["_rows"], "filled": {c: r[c] for c in columns}} for r in grouped.collect()}
    if not cfg.train.by_macro:
        stats = {
            ALL: {
                "rows": sum(s["rows"] for s in stats.values()),
                "filled": {c: sum(s["filled"][c] for s in stats.values()) for c in columns},
            }
        }
    return stats


def plans(cfg: Config, stats: dict[str, dict]) -> list[Plan]:
    present = sorted(m for m in stats if m is not None)
    return [
        Plan(layer, macro, [f for f in spec.features if stats[macro]["filled"].get(f, 0) > 0], stats[macro]["rows"])
        for layer, spec in cfg.train.active_layers.items()
        for macro in macros_of(layer, cfg, present)
    ]


def sweep_samples(data: DataFrame, todo: list[Plan], train: TrainConfig) -> dict[str, pd.DataFrame]:
    """At most ``sweep_sample`` rows of each macro segment that has a model to sweep, in one Spark job."""
    sizes = {p.macro: p.rows for p in todo if p.sweeps(train)}
    if not sizes:
        return {}
    fractions = {m: min(1.0, train.sweep_sample / n) for m, n in sizes.items()}
    if ALL in fractions:
        sample = data.sample(fraction=fractions[ALL], seed=train.seed) if fractions[ALL] < 1 else data
        frame = sample.drop("customer_id").toPandas()
        return {ALL: frame}
    sample = data.where(F.col("macro_segment").isin(list(fractions))).sampleBy("macro_segment", fractions, train.seed)
    frame = sample.drop("customer_id").toPandas()
    return {m: part.reset_index(drop=True) for m, part in frame.groupby("macro_segment")}


def prepare(todo: list[Plan], raw: dict[str, pd.DataFrame], catalog: Catalog, train: TrainConfig) -> dict:
    """Each swept (layer, macro)'s sample preprocessed as its MLlib pipeline would, with PCA where GMM is tried."""
    samples = {}
    for p in todo:
        if not p.sweeps(train) or p.macro not in raw:
            continue
        scaled = sweep.preprocess(raw[p.macro], p.features, catalog)
        with_pca = "gaussian_mixture" in train.active_layers[p.layer].algorithms and train.gmm_pca_variance
        samples[p.key] = sweep.Sample(scaled, sweep.pca(scaled, train.gmm_pca_variance) if with_pca else None)
    return samples


def sweep_tasks(todo: list[Plan], samples: dict, train: TrainConfig) -> list[sweep.Task]:
    return [
        sweep.Task(p.key, algorithm, k)
        for p in todo
        if p.key in samples
        for algorithm in train.active_layers[p.layer].algorithms
        for k in range(train.k_min, min(train.k_max, len(samples[p.key].scaled) - 1) + 1)
    ]


def training_rows(spark: SparkSession, cfg: Config, as_of: object) -> DataFrame:
    """The snapshot in a fixed layout (hash partitions, sorted within), so that a rerun on the same rows
    samples and fits the same: sampling and k-means|| initialisation depend on which rows sit where."""
    return (
        snapshot(spark, cfg, as_of)
        .repartition(sweep.parallelism(spark), "customer_id")
        .sortWithinPartitions("customer_id")
    )


def sweep_inputs(spark: SparkSession, cfg: Config, as_of: object) -> tuple[list[sweep.Task], dict]:
    """The sweep's tasks and preprocessed samples for a snapshot, as the train stage builds them (for benchmarks)."""
    with cached(training_rows(spark, cfg, as_of)) as data:
        todo = plans(cfg, macro_stats(data, cfg))
        samples = prepare(todo, sweep_samples(data, todo, cfg.train), load_catalog(cfg), cfg.train)
    return sweep_tasks(todo, samples, cfg.train), samples


def run_train(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Train every (layer, macro) model of the snapshot run.as_of under one MLflow parent run."""
    train, catalog = cfg.train, load_catalog(cfg)
    _check_features(cfg, catalog)
    tracking.configure(cfg)
    with cached(training_rows(spark, cfg, run.as_of)) as data:
        with described(spark, "train: rows and filled features per macro segment"):
            stats = macro_stats(data, cfg)
        todo = plans(cfg, stats)
        with described(spark, "train: sweep samples"):
            raw = sweep_samples(data, todo, train)
        samples = prepare(todo, raw, catalog, train)
        tasks = sweep_tasks(todo, samples, train)
        started = time.perf_counter()
        with described(spark, f"train: sweep of {len(tasks)} candidates (scikit-learn, one task per slot)"):
            results = sweep.run(spark, tasks, samples, train)
        sweep_seconds = time.perf_counter() - started
        per_candidate = [r["seconds"] for r in results]
        log.info(
            "sweep: %d candidates of %d models in %.1fs (per candidate: median %.3fs, max %.3fs)",
            len(tasks), len(samples), sweep_seconds, statistics.median(per_candidate or [0]), max(per_candidate or [0]),
        )  # fmt: skip
        by_key: dict[tuple[str, str], list[Candidate]] = {}
        for task, result in zip(tasks, results, strict=True):
            by_key.setdefault(task.key, []).append(_candidate(task, result))
        tags = {
            "git_commit": tracking.git_commit(),
            "config_hash": tracking.config_hash(cfg),
            "as_of": str(run.as_of),
            "pipeline_run_id": run.run_id,
            "seed": str(train.seed),
            **tracking.input_versions(spark, cfg, ["gold.customer_features"]),
        }
        summaries = []
        with mlflow.start_run(run_name=f"train-{run.as_of}", tags={**tags, "kind": "training"}) as parent:
            mlflow.log_params(
                {
                    "by_macro": train.by_macro,
                    "k_range": f"{train.k_min}-{train.k_max}",
                    "sweep_sample": train.sweep_sample,
                    "fit_sample": train.fit_sample or "all",
                    "seed": train.seed,
                    "feature_version": catalog.version,
                }
            )
            for macro in sorted({p.macro for p in todo}):
                with cached(rows_of(data, macro)) as rows:
                    for p in (p for p in todo if p.macro == macro):
                        with described(spark, f"train: {p.layer} / {p.macro}"):
                            summary = train_one(
                                rows, p, raw.get(macro), samples.get(p.key), by_key.get(p.key, []), catalog, cfg,
                                {**tags, MLFLOW_PARENT_RUN_ID: parent.info.run_id},
                            )  # fmt: skip
                        summaries.append(summary)
                        log.info(
                            "model %d/%d %s: %s k=%d silhouette %s, %s (candidates %d/%d swept)",
                            len(summaries), len(todo), summary["model"], summary["algorithm"], summary["k"],
                            _score(summary["silhouette"]), summary["promotion"],
                            sum(len(c["candidates"]) for c in summaries), len(tasks),
                        )  # fmt: skip
            mlflow.log_dict({"models": summaries}, "training_summary.json")
            parent_id = parent.info.run_id
    info = {
        "mlflow_run_id": parent_id,
        "models": summaries,
        "sweep": {
            "candidates": len(tasks),
            "seconds": round(sweep_seconds, 3),
            "candidate_seconds": [round(s, 4) for s in per_candidate],
        },
    }
    report = StageReport("train", info=info)
    for s in summaries:
        report.entries.append(Entry(s["model"], rows_in=s["rows"], details=s))
    return report


def _candidate(task: sweep.Task, result: dict) -> Candidate:
    return Candidate(
        algorithm=task.algorithm,
        k=task.k,
        silhouette=result["silhouette"],
        smallest_share=result["smallest_share"],
        stability=result["stability"],
        sizes=result["sizes"],
        wssse=result["wssse"],
        log_likelihood=result["log_likelihood"],
        bic=result["bic"],
        seconds=result["seconds"],
        error=result["error"],
    )


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


@dataclass
class Sweep:
    """The outcome of a sweep: every candidate measured, the one chosen (None: a single segment) and why."""

    candidates: list[Candidate]
    chosen: Candidate | None
    rule: str
    pca_k: int | None
    rows: int
    seconds: float
    refits: list[str] = field(default_factory=list)  # candidates whose refit fell short, and by how much


@dataclass
class Final:
    """The chosen candidate refitted, with its predictions' facts."""

    model: PipelineModel
    algorithm: str
    k: int
    sizes: dict[int, int]
    silhouette: float | None
    centroids: dict[int, list[float]]
    scaler_mean: list[float]
    scaler_std: list[float]
    fit_rows: int
    seconds: float
    agreement: float | None = None  # ARI between the refit and its sweep candidate on the sweep sample


def train_one(
    rows: DataFrame, p: Plan, raw: pd.DataFrame | None, sample: sweep.Sample | None, candidates: list[Candidate],
    catalog: Catalog, cfg: Config, tags: dict,
) -> dict:  # fmt: skip
    """Choose, refit, give stable ids, log and register the model of one (layer, macro)."""
    name = model_name(p.layer, p.macro)
    tags = {**tags, "layer": p.layer, "macro": p.macro}
    swept = choice(p, candidates, sample, cfg.train)
    final = fit_final(rows, p, catalog, cfg.train, swept, raw, sample)
    started = time.perf_counter()
    log_candidates(cfg, swept, p, tags)
    champion = _champion(cfg, name)
    mapping, same_as_champion = stable_ids(champion, final, p.features)
    run_id, model_uri = log_final(final, swept, mapping, p.features, p.rows, f"{p.layer} / {p.macro}", cfg, tags)
    champion_score, unscored = None, None
    if champion is not None and not same_as_champion and final.k > 1:
        champion_score, unscored = _champion_score(champion, rows, p.rows, cfg.train)
    version, decision = promote(
        cfg, name, model_uri, champion, same_as_champion, swept, final, champion_score, unscored
    )
    client = tracking.client(cfg)
    client.set_tag(run_id, "promotion", decision)
    if champion_score is not None:
        client.log_metric(run_id, "champion_silhouette_today", champion_score)
    return {
        "model": name,
        "layer": p.layer,
        "macro": p.macro,
        "algorithm": final.algorithm,
        "k": final.k,
        "silhouette": final.silhouette,
        "sweep_silhouette": swept.chosen.silhouette if swept.chosen else None,
        "refit_agreement_ari": final.agreement,
        "rows": p.rows,
        "sizes": {str(mapping["cluster_to_id"][c]): s for c, s in sorted(final.sizes.items())},
        "version": version,
        "promotion": decision,
        "run_id": run_id,
        "candidates": [{"algorithm": c.algorithm, "k": c.k, "seconds": c.seconds} for c in swept.candidates],
        "sweep_seconds": round(swept.seconds, 3),
        "fit_seconds": round(final.seconds, 2),
        "mlflow_seconds": round(time.perf_counter() - started, 2),
        "sweep_rows": swept.rows,
        "vanished_ids": mapping["vanished"],
        "refits_fell_short": swept.refits,
    }


def choice(p: Plan, candidates: list[Candidate], sample: sweep.Sample | None, train: TrainConfig) -> Sweep:
    """The selection rule applied to one (layer, macro)'s measured candidates (none: a single segment)."""
    seconds = sum(c.seconds or 0.0 for c in candidates)
    if not candidates:
        rule = f"one segment: {p.rows} rows < min_macro_size {train.min_macro_size}" if p.features else "no features"
        return Sweep([], None, rule, None, p.rows, seconds)
    chosen, rule = choose(candidates, train)
    return Sweep(candidates, chosen, rule, sample.pca_k, len(sample.scaled), seconds)


def fit_final(
    rows: DataFrame, p: Plan, catalog: Catalog, train: TrainConfig, swept: Sweep, raw: pd.DataFrame | None = None,
    sample: sweep.Sample | None = None,
) -> Final:  # fmt: skip
    """The chosen candidate (or one segment) refitted on all rows, or on fit_sample of them.

    The refit must be the model the sweep measured: its silhouette within ``refit_tolerance`` of the
    sweep's, and its labels of the sweep sample in agreement with the candidate's (adjusted Rand
    index at least ``min_refit_agreement``; MLlib's GaussianMixture starts from a random split and
    can land in another solution). Otherwise the next candidate in the rule's order is refitted, at
    most ``max_refits``; ``swept`` records the choice made and the refits that fell short.
    """
    started = time.perf_counter()
    n, features = p.rows, p.features
    sampled = bool(train.fit_sample and n > train.fit_sample)
    fit_rows = rows.sample(fraction=train.fit_sample / n, seed=train.seed) if sampled else rows
    limits = clip_limits(fit_rows, features, catalog)
    if swept.chosen is None:
        pipeline = single_segment_pipeline(features, catalog, limits)
        final = _refit(rows, n, fit_rows, pipeline, "single_segment", 1, features, train)
    else:
        tried = []
        for candidate, rule in rank(swept.candidates, train)[: train.max_refits]:
            pipeline = full_pipeline(features, catalog, limits, candidate.algorithm, candidate.k, train, swept.pca_k)
            final = _refit(rows, n, fit_rows, pipeline, candidate.algorithm, candidate.k, features, train)
            final.agreement = refit_agreement(rows.sparkSession, final.model, raw, features, candidate, sample, train)
            tried.append((final, candidate, rule))
            if refit_holds(final, candidate, train):
                break
            swept.refits.append(
                f"{candidate.algorithm} k={candidate.k}: silhouette {candidate.silhouette:.3f} in the sweep, "
                f"{_score(final.silhouette)} refitted, agreement {final.agreement:.3f}"
            )
        # None held: the refit closest to its candidate.
        final, swept.chosen, swept.rule = next(
            (t for t in tried if refit_holds(t[0], t[1], train)), max(tried, key=lambda t: t[0].agreement)
        )
        if swept.refits:
            swept.rule += f"; refits that fell short: {'; '.join(swept.refits)}"
    final.fit_rows = fit_rows.count() if sampled else n
    final.seconds = time.perf_counter() - started
    return final


def refit_holds(final: Final, candidate: Candidate, train: TrainConfig) -> bool:
    """The refit is the model the sweep measured: silhouette and labels both close to the candidate's.

    The labels must agree (adjusted Rand index) at least as well as the candidate agrees with a
    reseeded copy of itself, less ``refit_tolerance``, and at most ``min_refit_agreement`` is asked.
    """
    close = final.silhouette is not None and final.silhouette >= candidate.silhouette - train.refit_tolerance
    required = min(train.min_refit_agreement, candidate.stability - train.refit_tolerance)
    return close and final.agreement is not None and final.agreement >= required


def _refit(
    rows: DataFrame, n: int, fit_rows: DataFrame, pipeline: Pipeline, algorithm: str, k: int, features: list[str],
    train: TrainConfig,
) -> Final:  # fmt: skip
    model = pipeline.fit(fit_rows)
    predictions = model.transform(rows)
    # Sizes and centroids (mean of the transformed, imputed, unscaled vector) in one aggregation.
    aggregates = [F.count("*").alias("size")]
    if features:
        aggregates.append(Summarizer.mean(F.col(RAW)).alias("mean"))
    per_cluster = predictions.groupBy(CLUSTER).agg(*aggregates).collect()
    score = sample_silhouette(predictions, clustering_column(model), n, train) if k > 1 else None
    scaler = scaler_of(model)
    return Final(
        model=model,
        algorithm=algorithm,
        k=k,
        sizes={int(r[CLUSTER]): int(r["size"]) for r in per_cluster},
        silhouette=score,
        centroids={int(r[CLUSTER]): [float(v) for v in r["mean"].toArray()] for r in per_cluster}
        if features
        else {0: []},
        scaler_mean=list(map(float, scaler.mean.toArray())) if scaler else [],
        scaler_std=list(map(float, scaler.std.toArray())) if scaler else [],
        fit_rows=0,
        seconds=0.0,
    )


def sample_silhouette(predictions: DataFrame, features_col: str, rows: int, train: TrainConfig) -> float:
    """MLlib's silhouette (squared Euclidean) of scored rows, on at most ``silhouette_sample`` of them: one job."""
    fraction = min(1.0, train.silhouette_sample / max(rows, 1))
    sampled = predictions.sample(fraction=fraction, seed=train.seed) if fraction < 1 else predictions
    frame = sampled.select(vector_to_array(F.col(features_col)).alias("x"), CLUSTER).toPandas()
    if frame.empty:
        return -1.0
    return sweep.silhouette(np.stack(frame["x"].to_numpy()), frame[CLUSTER].to_numpy())


def refit_agreement(
    spark: SparkSession, model: PipelineModel, raw: pd.DataFrame, features: list[str], chosen: Candidate,
    sample: sweep.Sample, train: TrainConfig,
) -> float:  # fmt: skip
    """Adjusted Rand index between the MLlib refit and its scikit-learn candidate, both labelling the sweep sample."""
    from sklearn.metrics import adjusted_rand_score

    space = sample.pca if chosen.algorithm == "gaussian_mixture" and sample.pca is not None else sample.scaled
    candidate = sweep.fit(chosen.algorithm, chosen.k, train.seed, train.max_iter, space).predict(space)
    schema = T.StructType(
        [T.StructField("_row", T.IntegerType()), *[T.StructField(f, T.DoubleType()) for f in features]]
    )
    values = raw[features].astype(object).where(raw[features].notna(), None).itertuples(index=True, name=None)
    scored = model.transform(spark.createDataFrame(list(values), schema)).select("_row", CLUSTER).collect()
    refit = np.empty(len(raw), dtype=int)
    for r in scored:
        refit[r["_row"]] = r[CLUSTER]
    return float(adjusted_rand_score(candidate, refit))


def log_candidates(cfg: Config, swept: Sweep, p: Plan, tags: dict) -> None:
    """One child run per candidate, each created and filled with batch calls (three requests a run)."""
    client = tracking.client(cfg)
    experiment_id = mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    now = int(time.time() * 1000)
    for c in swept.candidates:
        name = f"{p.layer}-{p.macro}-{c.algorithm}-k{c.k}"
        run_tags = {**tags, "kind": "candidate", MLFLOW_RUN_NAME: name}
        if c.error:
            run_tags["error"] = c.error[:5000]
        run = client.create_run(experiment_id, tags=run_tags, run_name=name)
        params = {
            "algorithm": c.algorithm,
            "k": c.k,
            "features": ",".join(p.features),
            "sample_rows": swept.rows,
            "pca_components": swept.pca_k if c.algorithm == "gaussian_mixture" and swept.pca_k else "none",
            "sizes": json.dumps({str(k): v for k, v in c.sizes.items()}),
        }
        metrics = {**c.metrics(), "fit_seconds": c.seconds or 0.0}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
            params=[Param(key, str(value)) for key, value in params.items()],
            tags=[RunTag("passes", str(passes(c, cfg.train)).lower())],
        )
        client.set_terminated(run.info.run_id)
        c.run_id = run.info.run_id


def stable_ids(champion: object | None, final: Final, features: list[str]) -> tuple[dict, bool]:
    """The cluster -> stable id mapping against the champion, and whether the model equals the champion."""
    previous = _load_json(champion.run_id, "centroids.json") if champion else None
    previous_ids = _load_json(champion.run_id, "segment_ids.json") if champion else None
    comparable = bool(previous) and previous.get("features") == features
    mapping = match_segment_ids(
        final.centroids,
        {int(i): c for i, c in previous["centroids"].items()} if comparable else None,
        previous_ids["next_id"] if previous_ids else 0,
        final.scaler_mean,
        final.scaler_std,
    )
    if champion is not None and not comparable and previous_ids:
        # Other features: no shared space to match in, so every old id vanishes.
        mapping["vanished"] = sorted(int(i) for i in previous_ids["cluster_to_id"].values())
    mapping["centroids"] = {str(mapping["cluster_to_id"][c]): v for c, v in sorted(final.centroids.items())}
    same = comparable and _same(previous["centroids"], mapping["centroids"])
    return mapping, same


def log_final(
    final: Final, swept: Sweep, mapping: dict, features: list[str], n: int, title: str, cfg: Config, tags: dict
) -> tuple[str, str]:
    """The final model's nested MLflow run: params, metrics, artifacts and the model. Returns (run id, model URI)."""
    train = cfg.train
    with mlflow.start_run(
        run_name=f"{title.replace(' / ', '-')}-final", nested=True, tags={**tags, "kind": "final"}
    ) as run:
        mlflow.log_params(
            {
                "algorithm": final.algorithm,
                "k": final.k,
                "features": ",".join(features),
                "rows": n,
                "fit_rows": final.fit_rows,
                "sweep_rows": swept.rows,
                "selection": swept.rule,
                "pca_components": swept.pca_k if final.algorithm == "gaussian_mixture" else "none",
                "seed": train.seed,
            }
        )
        metrics = {
            "sweep_seconds": swept.seconds,
            "fit_seconds": final.seconds,
            "smallest_share": min(final.sizes.values()) / n,
        }
        metrics["refits_fell_short"] = len(swept.refits)
        if final.silhouette is not None:
            metrics["silhouette"] = final.silhouette
        if swept.chosen is not None:
            metrics.update({f"sweep_{name}": v for name, v in swept.chosen.metrics().items()})
            if final.silhouette is not None:
                metrics["silhouette_gap"] = swept.chosen.silhouette - final.silhouette  # sweep minus refit
        if final.agreement is not None:
            metrics["refit_agreement_ari"] = final.agreement
        mlflow.log_metrics(metrics)
        ids = mapping["cluster_to_id"]
        mlflow.log_dict({str(ids[c]): s for c, s in sorted(final.sizes.items())}, "segment_sizes.json")
        mlflow.log_dict(
            {
                "features": features,
                "space": "transformed, imputed, unscaled",
                "centroids": mapping["centroids"],
                "scaler_mean": final.scaler_mean,
                "scaler_std": final.scaler_std,
            },
            "centroids.json",
        )
        mlflow.log_dict(
            {
                "cluster_to_id": {str(c): i for c, i in ids.items()},
                "vanished": mapping["vanished"],
                "distances": mapping["distances"],
                "next_id": mapping["next_id"],
            },
            "segment_ids.json",
        )
        mlflow.log_dict(
            {
                "candidates": [
                    {
                        "algorithm": c.algorithm,
                        "k": c.k,
                        "run_id": c.run_id,
                        "passes": passes(c, train),
                        **c.metrics(),
                        "sizes": {str(k): v for k, v in c.sizes.items()},
                        "fit_seconds": c.seconds,
                        "error": c.error,
                    }
                    for c in swept.candidates
                ],
                "chosen": {"algorithm": final.algorithm, "k": final.k},
                "rule": swept.rule,
            },
            "k_selection.json",
        )
        if swept.candidates:
            _log_curves(swept.candidates, title)
        # Declared, not inferred: every feature is a nullable double, the output an integer cluster.
        signature = None
        if features:
            signature = ModelSignature(
                inputs=Schema([ColSpec("double", f, required=False) for f in features]),
                outputs=Schema([ColSpec("integer", CLUSTER)]),
            )
        info = mlflow.spark.log_model(
            final.model, artifact_path="model", pip_requirements=cfg.mlflow.pip_requirements, signature=signature
        )
        return run.info.run_id, info.model_uri


def promote(
    cfg: Config, name: str, model_uri: str, champion: object | None, same_as_champion: bool, swept: Sweep,
    final: Final, champion_score: float | None, unscored: str | None = None,
) -> tuple[str | None, str]:  # fmt: skip
    """Register the model and move the aliases by the promotion rule; returns (version, decision).

    Fails closed: when the champion could not be scored (``unscored`` says why), it keeps its
    alias unless promotion is forced; the new version is registered for inspection all the same.
    """
    train = cfg.train
    if same_as_champion:
        return str(champion.version), "same centroids as the champion: kept"
    if not train.register_model:
        return None, "not registered"
    version = str(mlflow.register_model(model_uri, name).version)
    passes_rule = swept.chosen is None or passes(swept.chosen, train)
    at_least_as_good = champion_score is None or (
        final.silhouette is not None and final.silhouette >= champion_score - train.promotion_tolerance
    )
    if champion is None or train.force_promote:
        promoted, decision = True, "forced" if train.force_promote else "promoted"
    elif unscored is not None:
        promoted, decision = False, f"kept the champion: {unscored}"
    else:
        promoted = passes_rule and at_least_as_good
        decision = "promoted" if promoted else "kept the champion"
    if promoted:
        client = tracking.client(cfg)
        if champion is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion.version)
        client.set_registered_model_alias(name, CHAMPION, version)
    return version, decision


def _champion(cfg: Config, name: str) -> object | None:
    try:
        return tracking.client(cfg).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _load_json(run_id: str, path: str) -> dict | None:
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    except (MlflowException, OSError):
        return None


def _same(a: dict, b: dict, tolerance: float = 1e-9) -> bool:
    return a.keys() == b.keys() and all(
        len(a[i]) == len(b[i]) and all(abs(x - y) <= tolerance for x, y in zip(a[i], b[i], strict=True)) for i in a
    )


def _champion_score(champion: object, rows: DataFrame, n: int, train: TrainConfig) -> tuple[float | None, str | None]:
    """The champion's silhouette on today's rows, in its own space; or None and why it could not be scored."""
    try:
        model = mlflow.spark.load_model(f"runs:/{champion.run_id}/model")
        return sample_silhouette(model.transform(rows), clustering_column(model), n, train), None
    except Exception as exc:  # any failure to load or score: the champion stays (fail closed)
        reason = f"champion v{champion.version} could not be scored ({type(exc).__name__}: {str(exc)[:300]})"
        log.warning("%s; it keeps the alias (use --force to replace it)", reason)
        return None, reason


# One colour per algorithm in every panel and every report.
ALGORITHM_COLORS = {"kmeans": "tab:blue", "bisecting_kmeans": "tab:orange", "gaussian_mixture": "tab:green"}


def _log_curves(candidates: list[Candidate], title: str) -> None:
    """k-selection curves (silhouette, stability, WSSSE, BIC against k) as one PNG artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("silhouette", "silhouette"), ("stability", "stability (ARI)"), ("wssse", "WSSSE"), ("bic", "GMM BIC")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (attr, label) in zip(axes, panels, strict=True):
        for algorithm in sorted({c.algorithm for c in candidates}):
            color = ALGORITHM_COLORS.get(algorithm)
            points = [(c.k, getattr(c, attr)) for c in candidates if c.algorithm == algorithm]
            points = [(k, v) for k, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=algorithm, color=color)
        ax.set_xlabel("k")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "k_selection.png")
        fig.savefig(path, dpi=90)
        mlflow.log_artifact(str(path))
    plt.close(fig)


def load_champion(cfg: Config, layer: str, macro: str) -> tuple[PipelineModel, dict]:
    """A (layer, macro) champion, its registry facts and its cluster -> stable id mapping.

    Raises:
        ModelMissingError: the model has no champion (train has not run for this layer and macro).
    """
    tracking.configure(cfg)
    name = model_name(layer, macro)
    version = _champion(cfg, name)
    if version is None:
        raise ModelMissingError(
            f"registered model {name} has no '{CHAMPION}' alias at {cfg.tracking_uri}; run the train stage "
            f"for this as_of (microseg train) before assign"
        )
    model = mlflow.spark.load_model(f"models:/{name}@{CHAMPION}")
    ids = _load_json(version.run_id, "segment_ids.json") or {"cluster_to_id": {}}
    return model, {
        "model": name,
        "version": str(version.version),
        "run_id": version.run_id,
        "cluster_to_id": {int(c): int(i) for c, i in ids["cluster_to_id"].items()},
    }


def summary_lines(info: dict) -> list[str]:
    lines = ["models (layer / macro: algorithm, k, silhouette, sizes by segment id, registry):"]
    for m in info.get("models", []):
        lines.append(
            f"  {m['layer']:<11} {m['macro']:<12} {m['algorithm']:<17} k={m['k']:<2} "
            f"silhouette {_score(m['silhouette']):<6} "
            f"sizes {json.dumps(m['sizes'])}  v{m['version']} ({m['promotion']}); "
            f"{len(m['candidates'])} candidates on {m['sweep_rows']:,} rows in {m['sweep_seconds']:.1f}s, "
            f"final fit {m['fit_seconds']:.1f}s on {m['rows']:,}"
        )
    sweep_info = info.get("sweep")
    if sweep_info and sweep_info["candidates"]:
        seconds = sweep_info["candidate_seconds"]
        lines.append(
            f"  sweep: {sweep_info['candidates']} candidates in {sweep_info['seconds']:.1f}s wall "
            f"(per candidate median {statistics.median(seconds):.3f}s, max {max(seconds):.3f}s)"
        )
    return lines
