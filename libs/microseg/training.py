"""Train stage: per layer and macro segment, sweep algorithms and k, choose, refit, track, register.

MLflow layout: one parent run per training run; per (layer, macro) a child run per candidate and a
child run for the final model (its artifacts: k-selection curves, centroids, sizes, the stable-id
mapping). The model is registered as ``microseg-<layer>-<macro>``; the alias ``champion`` moves to
it only when it passes the selection rule and is at least as good as the champion on today's data
(or ``train.force_promote``); the former champion keeps the alias ``previous``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.spark
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg import tables, tracking
from microseg.catalog import Catalog, load_catalog
from microseg.config import Config, TrainConfig
from microseg.errors import ConfigError, ModelMissingError
from microseg.models import (
    ALL,
    CLUSTER,
    PCA_COL,
    SCALED,
    Candidate,
    centroids,
    choose,
    clip_limits,
    clustering_column,
    evaluate_candidate,
    full_pipeline,
    match_segment_ids,
    model_name,
    passes,
    pca_components,
    pca_stage,
    preprocessing,
    rank,
    scaler_of,
    silhouette,
    single_segment_pipeline,
)
from microseg.runlog import Entry, RunContext, StageReport

CHAMPION, PREVIOUS = "champion", "previous"


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


def run_train(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Train every (layer, macro) model of the snapshot run.as_of under one MLflow parent run."""
    train, catalog = cfg.train, load_catalog(cfg)
    _check_features(cfg, catalog)
    tracking.configure(cfg)
    partitions = spark.sparkContext.defaultParallelism
    # A fixed layout (hash partitions, sorted within) so that a rerun on the same rows fits the same
    # models: k-means|| initialisation depends on which rows sit in which partition.
    data = snapshot(spark, cfg, run.as_of).repartition(partitions, "customer_id").sortWithinPartitions("customer_id")
    data = data.cache()
    present = sorted(r[0] for r in data.select("macro_segment").distinct().collect())
    tags = {
        "git_commit": tracking.git_commit(),
        "config_hash": tracking.config_hash(cfg),
        "as_of": str(run.as_of),
        "pipeline_run_id": run.run_id,
        "seed": str(train.seed),
        **tracking.input_versions(spark, cfg, ["gold.customer_features"]),
    }
    results = []
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
        macros_needed = sorted({m for layer in train.active_layers for m in macros_of(layer, cfg, present)})
        for macro in macros_needed:
            rows = rows_of(data, macro).cache()
            n = rows.count()
            filled = rows.select([F.count(c).alias(c) for c in rows.columns]).first().asDict()
            for layer in train.active_layers:
                if macro in macros_of(layer, cfg, present):
                    results.append(train_one(rows, n, filled, layer, macro, catalog, cfg, tags))
            rows.unpersist()
        mlflow.log_dict({"models": [r["summary"] for r in results]}, "training_summary.json")
        parent_id = parent.info.run_id
    data.unpersist()
    report = StageReport("train", info={"mlflow_run_id": parent_id, "models": [r["summary"] for r in results]})
    for r in results:
        report.entries.append(Entry(r["summary"]["model"], rows_in=r["summary"]["rows"], details=r["summary"]))
    return report


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


def train_one(
    rows: DataFrame, n: int, filled: dict, layer: str, macro: str, catalog: Catalog, cfg: Config, tags: dict
) -> dict:
    """Sweep, choose, refit, give stable ids, log and register the model of one (layer, macro)."""
    features = [f for f in cfg.train.active_layers[layer].features if filled.get(f, 0) > 0]  # nobody has: no help
    name = model_name(layer, macro)
    tags = {**tags, "layer": layer, "macro": macro}
    swept = sweep(rows, n, features, layer, macro, catalog, cfg.train, tags)
    final = fit_final(rows, n, features, catalog, cfg.train, swept)
    champion = _champion(cfg, name)
    mapping, same_as_champion = stable_ids(champion, final, features)
    run_id, model_uri = log_final(final, swept, mapping, features, n, f"{layer} / {macro}", cfg, tags)
    champion_score = None
    if champion is not None and not same_as_champion and final.k > 1:
        champion_score = _champion_score(champion, rows, cfg.train)
    version, decision = promote(cfg, name, model_uri, champion, same_as_champion, swept, final, champion_score)
    client = tracking.client(cfg)
    client.set_tag(run_id, "promotion", decision)
    if champion_score is not None:
        client.log_metric(run_id, "champion_silhouette_today", champion_score)
    summary = {
        "model": name,
        "layer": layer,
        "macro": macro,
        "algorithm": final.algorithm,
        "k": final.k,
        "silhouette": final.silhouette,
        "rows": n,
        "sizes": {str(mapping["cluster_to_id"][c]): s for c, s in sorted(final.sizes.items())},
        "version": version,
        "promotion": decision,
        "run_id": run_id,
        "sweep_seconds": round(swept.seconds, 2),
        "fit_seconds": round(final.seconds, 2),
        "sweep_rows": swept.rows,
        "vanished_ids": mapping["vanished"],
        "refits_fell_short": swept.refits,
    }
    return {"summary": summary}


def sweep(
    rows: DataFrame, n: int, features: list[str], layer: str, macro: str, catalog: Catalog, train: TrainConfig,
    tags: dict,
) -> Sweep:  # fmt: skip
    """Every algorithm for every k on one cached, preprocessed sample; each candidate a nested MLflow run."""
    started = time.perf_counter()
    if n < train.min_macro_size or not features:
        rule = f"one segment: {n} rows < min_macro_size {train.min_macro_size}" if features else "no features"
        return Sweep([], None, rule, None, n, time.perf_counter() - started)
    sample = rows.sample(fraction=train.sweep_sample / n, seed=train.seed) if n > train.sweep_sample else rows
    limits = clip_limits(sample, features, catalog)
    prep = Pipeline(stages=preprocessing(features, catalog, limits)).fit(sample)
    prepared = prep.transform(sample).select(SCALED).cache()
    sample_rows = prepared.count()
    algorithms = train.active_layers[layer].algorithms
    pca_k = None
    if "gaussian_mixture" in algorithms and train.gmm_pca_variance:
        pca_k = pca_components(prepared, len(features), train.gmm_pca_variance)
        scaled_only = prepared
        prepared = pca_stage(pca_k).fit(prepared).transform(prepared).select(SCALED, PCA_COL).cache()
        scaled_only.unpersist()
    candidates = []
    for algorithm in algorithms:
        column = PCA_COL if algorithm == "gaussian_mixture" and pca_k else SCALED
        dims = pca_k if column == PCA_COL else len(features)
        for k in range(train.k_min, min(train.k_max, sample_rows - 1) + 1):
            run_name = f"{layer}-{macro}-{algorithm}-k{k}"
            with mlflow.start_run(run_name=run_name, nested=True, tags={**tags, "kind": "candidate"}) as child:
                candidate, _ = evaluate_candidate(prepared, algorithm, k, column, dims, train)
                candidate.run_id = child.info.run_id
                mlflow.log_params(
                    {
                        "algorithm": algorithm,
                        "k": k,
                        "features": ",".join(features),
                        "sample_rows": sample_rows,
                        "pca_components": pca_k if column == PCA_COL else "none",
                    }
                )
                mlflow.log_metrics(candidate.metrics())
                mlflow.log_dict({str(c): s for c, s in candidate.sizes.items()}, "segment_sizes.json")
            candidates.append(candidate)
    prepared.unpersist()
    chosen, rule = choose(candidates, train)
    return Sweep(candidates, chosen, rule, pca_k, sample_rows, time.perf_counter() - started)


def fit_final(
    rows: DataFrame, n: int, features: list[str], catalog: Catalog, train: TrainConfig, swept: Sweep
) -> Final:
    """The chosen candidate (or one segment) refitted on all rows, or on fit_sample of them.

    A refit whose silhouette falls more than ``refit_tolerance`` below its sweep's gives way to the
    next candidate in the rule's order (at most ``max_refits``); ``swept`` records the choice made.
    """
    started = time.perf_counter()
    fit_rows = (
        rows.sample(fraction=train.fit_sample / n, seed=train.seed)
        if train.fit_sample and n > train.fit_sample
        else rows
    )
    limits = clip_limits(fit_rows, features, catalog)
    if swept.chosen is None:
        final = _refit(
            rows, fit_rows, single_segment_pipeline(features, catalog, limits), "single_segment", 1, features, train
        )
    else:
        for candidate, rule in rank(swept.candidates, train)[: train.max_refits]:
            pipeline = full_pipeline(features, catalog, limits, candidate.algorithm, candidate.k, train, swept.pca_k)
            final = _refit(rows, fit_rows, pipeline, candidate.algorithm, candidate.k, features, train)
            swept.chosen, swept.rule = candidate, rule
            if final.silhouette is not None and final.silhouette >= candidate.silhouette - train.refit_tolerance:
                break
            swept.refits.append(
                f"{candidate.algorithm} k={candidate.k}: silhouette {candidate.silhouette:.3f} in the sweep, "
                f"{final.silhouette:.3f} refitted"
            )
        if swept.refits:
            swept.rule += f"; refits that fell short: {'; '.join(swept.refits)}"
    final.fit_rows = fit_rows.count() if fit_rows is not rows else n
    final.seconds = time.perf_counter() - started
    return final


def _refit(
    rows: DataFrame, fit_rows: DataFrame, pipeline: Pipeline, algorithm: str, k: int, features: list[str],
    train: TrainConfig,
) -> Final:  # fmt: skip
    model = pipeline.fit(fit_rows)
    predictions = model.transform(rows).cache()
    sizes = {int(r[CLUSTER]): int(r["count"]) for r in predictions.groupBy(CLUSTER).count().collect()}
    score = silhouette(predictions, clustering_column(model), train.silhouette_sample, train.seed) if k > 1 else None
    scaler = scaler_of(model)
    final = Final(
        model=model,
        algorithm=algorithm,
        k=k,
        sizes=sizes,
        silhouette=score,
        centroids=centroids(predictions) if features else {0: []},
        scaler_mean=list(map(float, scaler.mean.toArray())) if scaler else [],
        scaler_std=list(map(float, scaler.std.toArray())) if scaler else [],
        fit_rows=0,
        seconds=0.0,
    )
    predictions.unpersist()
    return final


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
                    {"algorithm": c.algorithm, "k": c.k, "run_id": c.run_id, "passes": passes(c, train), **c.metrics()}
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
    final: Final, champion_score: float | None,
) -> tuple[str | None, str]:  # fmt: skip
    """Register the model and move the aliases by the promotion rule; returns (version, decision)."""
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
    promoted = champion is None or train.force_promote or (passes_rule and at_least_as_good)
    if promoted:
        client = tracking.client(cfg)
        if champion is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion.version)
        client.set_registered_model_alias(name, CHAMPION, version)
    return version, "forced" if train.force_promote else ("promoted" if promoted else "kept the champion")


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


def _champion_score(champion: object, rows: DataFrame, train: TrainConfig) -> float | None:
    """The champion's silhouette on today's rows, in its own space (None if it cannot score them)."""
    try:
        model = mlflow.spark.load_model(f"runs:/{champion.run_id}/model")
        return silhouette(model.transform(rows), clustering_column(model), train.silhouette_sample, train.seed)
    except Exception:
        return None


def _log_curves(candidates: list[Candidate], title: str) -> None:
    """k-selection curves (silhouette, stability, WSSSE, BIC against k) as one PNG artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("silhouette", "silhouette"), ("stability", "stability (ARI)"), ("wssse", "WSSSE"), ("bic", "GMM BIC")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (attr, label) in zip(axes, panels, strict=True):
        for algorithm in sorted({c.algorithm for c in candidates}):
            points = [(c.k, getattr(c, attr)) for c in candidates if c.algorithm == algorithm]
            points = [(k, v) for k, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=algorithm)
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
        score = f"{m['silhouette']:.3f}" if m["silhouette"] is not None else "—"
        lines.append(
            f"  {m['layer']:<11} {m['macro']:<12} {m['algorithm']:<17} k={m['k']:<2} silhouette {score:<6} "
            f"sizes {json.dumps(m['sizes'])}  v{m['version']} ({m['promotion']}); "
            f"sweep {m['sweep_seconds']:.1f}s on {m['sweep_rows']:,} rows, "
            f"final fit {m['fit_seconds']:.1f}s on {m['rows']:,}"
        )
    return lines
