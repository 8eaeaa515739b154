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
import time
from dataclasses import replace

import pandas as pd
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.features.catalog import Catalog, load_catalog
from microseg.runtime import lake, provenance, sparkops, tables
from microseg.runtime.config import Config, TrainConfig
from microseg.runtime.errors import ConfigError
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import cached, described
from microseg.segmentation import algorithms, registry, screening, sweep
from microseg.segmentation.artifacts import log_candidates, log_final, log_summary, training_run
from microseg.segmentation.metrics import Candidate
from microseg.segmentation.pipeline import (
    ALL,
    model_name,
)
from microseg.segmentation.refit import fit_final
from microseg.segmentation.registry import ChampionCheck, champion_score_today, champion_version, promote
from microseg.segmentation.selection import ModelInputs, Plan, choice, score_text
from microseg.segmentation.stable_ids import stable_ids

log = logging.getLogger(__name__)


def snapshot(spark: SparkSession, cfg: Config, as_of: object) -> DataFrame:
    """customer_id, macro_segment and every layer's features (as doubles) of one snapshot."""
    columns = sorted({f for layer in cfg.train.active_layers.values() for f in layer.features})
    features = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(as_of))
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


def check_algorithms(cfg: Config) -> None:
    """Every switched-on layer names registered algorithms only (``algorithms.ALGORITHMS``).

    Raises:
        ConfigError: naming ``train.layers.<layer>.algorithms``, the unknown names and the known ones.
    """
    for layer, spec in cfg.train.active_layers.items():
        unknown = [a for a in spec.algorithms if a not in algorithms.ALGORITHMS]
        if unknown:
            raise ConfigError(
                f"train.layers.{layer}.algorithms names unknown algorithm(s) {unknown}; "
                f"known algorithms: {list(algorithms.ALGORITHMS)}"
            )


def macro_stats(data: DataFrame, cfg: Config) -> dict[str, dict]:
    """Per macro segment (and ``all``): rows, how many rows have each feature, and the sum of the rows'
    hashes (``provenance.hash_sum``, for ``snapshot_fingerprint``). One Spark job."""
    columns = [c for c in data.columns if c not in ("customer_id", "macro_segment")]
    grouped = data.groupBy("macro_segment").agg(
        F.count("*").alias("_rows"), provenance.hash_sum(data).alias("_hash"), *[F.count(c).alias(c) for c in columns]
    )
    stats = {
        r["macro_segment"]: {"rows": r["_rows"], "hash": int(r["_hash"] or 0), "filled": {c: r[c] for c in columns}}
        for r in grouped.collect()
    }
    if not cfg.train.by_macro:
        stats = {
            ALL: {
                "rows": sum(s["rows"] for s in stats.values()),
                "hash": sum(s["hash"] for s in stats.values()),
                "filled": {c: sum(s["filled"][c] for s in stats.values()) for c in columns},
            }
        }
    return stats


def snapshot_fingerprint(stats: dict[str, dict]) -> str:
    """The fingerprint of the rows the train stage reads (``provenance.fingerprint_text``), from ``macro_stats``."""
    return provenance.fingerprint_text(sum(s["rows"] for s in stats.values()), sum(s["hash"] for s in stats.values()))


def plans(cfg: Config, stats: dict[str, dict]) -> list[Plan]:
    present = sorted(m for m in stats if m is not None)
    return [
        Plan(
            layer,
            macro,
            [f for f in spec.features if stats[macro]["filled"].get(f, 0) > 0],
            stats[macro]["rows"],
            {f: "all null" for f in spec.features if stats[macro]["filled"].get(f, 0) == 0},
        )
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
    """Each swept (layer, macro)'s sample preprocessed as its MLlib pipeline would, with PCA where an algorithm
    that uses it (``Algorithm.uses_pca``) is tried."""
    samples = {}
    for p in todo:
        if not p.sweeps(train) or p.macro not in raw:
            continue
        scaled = sweep.preprocess(raw[p.macro], p.features, catalog)
        uses_pca = any(algorithms.get(a).uses_pca for a in train.active_layers[p.layer].algorithms)
        with_pca = uses_pca and train.gmm_pca_variance
        samples[p.key] = sweep.Sample(scaled, sweep.pca(scaled, train.gmm_pca_variance) if with_pca else None)
    return samples


def screened(todo: list[Plan], raw: dict[str, pd.DataFrame], train: TrainConfig) -> list[Plan]:
    """The plans with only informative features (``screening.screen_plans``), screened on their sweep samples."""
    return screening.screen_plans(todo, raw, {p.key: p.sweeps(train) for p in todo})


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
        .repartition(sparkops.default_parallelism(spark), "customer_id")
        .sortWithinPartitions("customer_id")
    )


def sweep_inputs(spark: SparkSession, cfg: Config, as_of: object) -> tuple[list[sweep.Task], dict]:
    """The sweep's tasks and preprocessed samples for a snapshot, as the train stage builds them (for benchmarks)."""
    with cached(training_rows(spark, cfg, as_of)) as data:
        todo = plans(cfg, macro_stats(data, cfg))
        raw = sweep_samples(data, todo, cfg.train)
        todo = screened(todo, raw, cfg.train)
        samples = prepare(todo, raw, load_catalog(cfg), cfg.train)
    return sweep_tasks(todo, samples, cfg.train), samples


# Lineage tags compared with the champions' before training (lineage.features_version is shown, not compared:
# the table's version moves when any other snapshot is written, the fingerprint only when these rows change).
COMPARED = [f"{registry.LINEAGE}{key}" for key in ("as_of", "features", "config", "code")]


def train_lineage(cfg: Config, catalog: Catalog, as_of: object, stats: dict, features_version: str) -> dict[str, str]:
    """What a training depends on, as ``lineage.*`` tags: the snapshot, the fingerprint of its rows as train reads
    them (``snapshot_fingerprint``) and the table's version then, the config that training reads (the train
    section but ``force_promote``, and the feature catalog: its transforms) and the code (``code_version``).

    Only the config training reads: a changed assign, profile or Spark setting retrains nothing. What the
    features stage's config (lifecycle rules...) changes reaches training through the rows' fingerprint.
    """
    trained_by = {"train": cfg.train.model_dump(mode="json", exclude={"force_promote"}), "catalog": catalog}
    return {
        f"{registry.LINEAGE}as_of": str(as_of),
        f"{registry.LINEAGE}features": snapshot_fingerprint(stats),
        f"{registry.LINEAGE}features_version": features_version,
        f"{registry.LINEAGE}config": provenance.digest(trained_by),
        f"{registry.LINEAGE}code": provenance.code_version(),
    }


def skipped_train(todo: list[Plan], lineage: dict[str, str], found: registry.Lineage) -> StageReport:
    """The report of a train skipped because every champion already carries this lineage: one line says why."""
    versions = "/".join(f"v{v}" for v in found.recorded(f"{registry.LINEAGE}features_version"))
    now = lineage[f"{registry.LINEAGE}features_version"]
    rows, fingerprint = lineage[f"{registry.LINEAGE}features"].split(":")
    line = (
        f"train: skipped, every champion ({len(todo)} model{'s' if len(todo) != 1 else ''}) was trained on "
        f"{lake.CUSTOMER_FEATURES} "
        f"{versions} for as_of {lineage[f'{registry.LINEAGE}as_of']} ({int(rows):,} rows, fingerprint "
        f"{fingerprint[:8]}{'' if versions == f'v{now}' else f', the same rows at v{now}'}) with config "
        f"{lineage[f'{registry.LINEAGE}config'][:8]} and code {lineage[f'{registry.LINEAGE}code'][:8]} "
        "(--retrain to train again)"
    )
    log.info(line)
    report = StageReport("train", info={"skipped": line, "models": []})
    for p in todo:
        name = model_name(p.layer, p.macro)
        champion = found.champions[name]
        details = {"skipped": line, "champion_version": str(champion.version), "run_id": champion.run_id}
        report.entries.append(Entry(name, rows_in=0, rows_written=0, rows_quarantined=0, details=details))
    return report


def run_train(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Train every (layer, macro) model of the snapshot run.as_of under one MLflow parent run.

    Skipped, with one line that says why, when every model's champion carries this training's lineage
    (``train_lineage``: the same snapshot rows, config and code), unless ``run.retrain``.
    """
    check_algorithms(cfg)
    train, catalog = cfg.train, load_catalog(cfg)
    _check_features(cfg, catalog)
    registry.configure(cfg)
    versions = provenance.input_versions(spark, cfg, [lake.CUSTOMER_FEATURES])
    with described(spark, "train: rows, filled features and fingerprint per macro segment"):
        stats = macro_stats(snapshot(spark, cfg, run.as_of), cfg)
    todo = plans(cfg, stats)
    lineage = train_lineage(cfg, catalog, run.as_of, stats, versions[f"input_version.{lake.CUSTOMER_FEATURES}"])
    if todo and not run.retrain:
        names = [model_name(p.layer, p.macro) for p in todo]
        found = registry.champions_lineage(cfg, names, lineage, COMPARED)  # raises if the registry is unreachable
        if found.differs is None:
            return skipped_train(todo, lineage, found)
        log.info("train: training %d model%s: %s", len(todo), "s" if len(todo) != 1 else "", found.differs)
    elif todo:
        log.info("train: training %d model%s: --retrain", len(todo), "s" if len(todo) != 1 else "")
    with cached(training_rows(spark, cfg, run.as_of)) as data:
        with described(spark, "train: sweep samples"):
            raw = sweep_samples(data, todo, train)
        todo = screened(todo, raw, train)
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
            "git_commit": provenance.git_commit(),
            "config_hash": provenance.config_hash(cfg),
            "as_of": str(run.as_of),
            "pipeline_run_id": run.run_id,
            "seed": str(train.seed),
            **versions,
            **lineage,
        }
        summaries = []
        params = {
            "by_macro": train.by_macro,
            "k_range": f"{train.k_min}-{train.k_max}",
            "sweep_sample": train.sweep_sample,
            "fit_sample": train.fit_sample or "all",
            "seed": train.seed,
            "feature_version": catalog.version,
        }
        with training_run(f"train-{run.as_of}", tags, params) as parent_id:
            for macro in sorted({p.macro for p in todo}):
                with cached(rows_of(data, macro)) as rows:
                    for p in (p for p in todo if p.macro == macro):
                        with described(spark, f"train: {p.layer} / {p.macro}"):
                            run_tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_id, "layer": p.layer}
                            m = ModelInputs(
                                p, rows, raw.get(macro), samples.get(p.key), catalog, cfg, {**run_tags, "macro": macro}
                            )
                            summary = train_one(m, by_key.get(p.key, []))
                        summaries.append(summary)
                        log.info(
                            "model %d/%d %s: %s k=%d silhouette %s, %s (candidates %d/%d swept)",
                            len(summaries), len(todo), summary["model"], summary["algorithm"], summary["k"],
                            score_text(summary["silhouette"]), summary["promotion"],
                            sum(len(c["candidates"]) for c in summaries), len(tasks),
                        )  # fmt: skip
            log_summary({"models": summaries}, "training_summary.json")
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


def train_one(m: ModelInputs, candidates: list[Candidate]) -> dict:
    """Choose, refit, give stable ids, log and register the model of one (layer, macro)."""
    p, cfg = m.plan, m.cfg
    name = model_name(p.layer, p.macro)
    swept = choice(p, candidates, m.sample, cfg.train)
    if swept.chosen is None and (p.single or swept.candidates):
        # No informative feature or no structure: one segment that reads no feature, so that it equals
        # the champion when that is the same single segment (same_centroids) and is not registered again.
        p = replace(p, features=[])
        m = replace(m, plan=p)
    final = fit_final(m, swept)
    started = time.perf_counter()
    log_candidates(cfg, swept, p, m.tags)
    live = champion_version(cfg, name)
    mapping, same_as_champion = stable_ids(live, final, p.features)
    run_id, model_uri = registry.retried(log_final)(m, final, swept, mapping)
    champion = ChampionCheck(live, same_as_champion)
    if live is not None and not same_as_champion and final.k > 1:
        champion = ChampionCheck(live, False, *champion_score_today(cfg, live, m.rows, p.rows))
    lineage = {k: v for k, v in m.tags.items() if k.startswith(registry.LINEAGE)}
    version, decision = promote(cfg, name, model_uri, champion, swept, final, lineage)
    client = registry.client(cfg)
    registry.retried(client.set_tag)(run_id, "promotion", decision)
    if champion.score is not None:
        registry.retried(client.log_metric)(run_id, "champion_silhouette_today", champion.score)
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
        "features": p.features,
        "dropped_features": m.plan.dropped,
        "selection": swept.rule,
        "single_segment_reason": swept.rule if final.k == 1 else None,
    }


def summary_lines(info: dict) -> list[str]:
    lines = ["models (layer / macro: algorithm, k, silhouette, sizes by segment id, registry):"]
    for m in info.get("models", []):
        lines.append(
            f"  {m['layer']:<11} {m['macro']:<12} {m['algorithm']:<17} k={m['k']:<2} "
            f"silhouette {score_text(m['silhouette']):<6} "
            f"sizes {json.dumps(m['sizes'])}  v{m['version']} ({m['promotion']}); "
            f"{len(m['candidates'])} candidates on {m['sweep_rows']:,} rows in {m['sweep_seconds']:.1f}s, "
            f"final fit {m['fit_seconds']:.1f}s on {m['rows']:,}"
        )
        if m.get("single_segment_reason"):
            lines.append(f"    k=1: {m['single_segment_reason']}")
        for feature, why in (m.get("dropped_features") or {}).items():
            lines.append(f"    dropped {feature}: {why}")
    sweep_info = info.get("sweep")
    if sweep_info and sweep_info["candidates"]:
        seconds = sweep_info["candidate_seconds"]
        lines.append(
            f"  sweep: {sweep_info['candidates']} candidates in {sweep_info['seconds']:.1f}s wall "
            f"(per candidate median {statistics.median(seconds):.3f}s, max {max(seconds):.3f}s)"
        )
    return lines
