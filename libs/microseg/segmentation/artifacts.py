"""What a training run leaves in MLflow: candidate runs (batch calls), the final run's metrics, artifacts and model."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from microseg.runtime import plots, spark_models
from microseg.runtime.config import Config
from microseg.segmentation import algorithms, registry
from microseg.segmentation.algorithms import SINGLE_SEGMENT
from microseg.segmentation.metrics import Candidate
from microseg.segmentation.pipeline import (
    CLUSTER,
)
from microseg.segmentation.refit import Final
from microseg.segmentation.selection import ModelInputs, Plan, Sweep, passes


def log_candidates(cfg: Config, swept: Sweep, p: Plan, tags: dict) -> None:
    """One child run per candidate, each created and filled with batch calls (three requests a run)."""
    client = registry.client(cfg)
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
            "pca_components": swept.pca_k if algorithms.get(c.algorithm).uses_pca and swept.pca_k else "none",
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


def log_final(m: ModelInputs, final: Final, swept: Sweep, mapping: dict) -> tuple[str, str]:
    """The final model's nested MLflow run: params, metrics, artifacts and the model. Returns (run id, model URI)."""
    cfg, train, features, n, title, tags = m.cfg, m.train, m.plan.features, m.plan.rows, m.title, m.tags
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
                "selection": swept.rule[:6000],
                "pca_components": swept.pca_k if _uses_pca(final.algorithm) else "none",
                "seed": train.seed,
                "dropped_features": json.dumps(m.plan.dropped)[:6000],
            }
        )
        if final.k == 1:
            mlflow.set_tag("single_segment_reason", swept.rule[:5000])
        mlflow.log_dict(
            {
                "features": features,
                "dropped": m.plan.dropped,
                "single_segment_reason": swept.rule if final.k == 1 else None,
            },
            "feature_screening.json",
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
        info = spark_models.log_spark_model(
            cfg, final.model, artifact_path="model", pip_requirements=cfg.mlflow.pip_requirements, signature=signature
        )
        return run.info.run_id, info.model_uri


def _uses_pca(algorithm: str) -> bool:
    """Whether the final model fits on the PCA (the one-segment model is no algorithm: it does not)."""
    return algorithm != SINGLE_SEGMENT and algorithms.get(algorithm).uses_pca


def curves_figure(candidates: list[Candidate], title: str):  # noqa: ANN201 - a matplotlib Figure
    """k-selection curves (silhouette, stability, WSSSE, BIC against k), each algorithm in its one colour
    (``algorithms.color``) in every panel, so that a panel without one algorithm's points shifts no colour."""
    plt = plots.pyplot()
    panels = [("silhouette", "silhouette"), ("stability", "stability (ARI)"), ("wssse", "WSSSE"), ("bic", "GMM BIC")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (attr, label) in zip(axes, panels, strict=True):
        for algorithm in sorted({c.algorithm for c in candidates}):
            points = [(c.k, getattr(c, attr)) for c in candidates if c.algorithm == algorithm]
            points = [(k, v) for k, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=algorithm, color=algorithms.color(algorithm))
        ax.set_xlabel("k")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _log_curves(candidates: list[Candidate], title: str) -> None:
    """``curves_figure`` as one PNG artifact, k_selection.png."""
    plt = plots.pyplot()
    fig = curves_figure(candidates, title)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "k_selection.png")
        fig.savefig(path, dpi=90)
        mlflow.log_artifact(str(path))
    plt.close(fig)


@contextmanager
def training_run(name: str, tags: dict, params: dict) -> Iterator[str]:
    """The parent run of a training run (its candidate and final runs nest under it); yields its id."""
    with mlflow.start_run(run_name=name, tags={**tags, "kind": "training"}) as parent:
        mlflow.log_params(params)
        yield parent.info.run_id


def log_summary(summary: dict, artifact: str) -> None:
    """A JSON artifact on the active run."""
    mlflow.log_dict(summary, artifact)


def log_report(path: str, name: str, tags: dict) -> None:
    """A run of its own (kind ``report``) holding the segment report."""
    with mlflow.start_run(run_name=name, tags={**tags, "kind": "report"}):
        mlflow.log_artifact(path)
