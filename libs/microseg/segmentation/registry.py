"""MLflow set-up: tracking and registry URIs, the experiment and its artifact location, run tags."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import mlflow
import requests
import tenacity
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame

from microseg.runtime import faults, logs, spark_models
from microseg.runtime.config import Config
from microseg.runtime.errors import ModelMissingError
from microseg.segmentation.pipeline import clustering_column, model_name
from microseg.segmentation.refit import Final, sample_silhouette
from microseg.segmentation.selection import Sweep, passes

P, T = ParamSpec("P"), TypeVar("T")
log = logging.getLogger(__name__)


# Error codes of a failure that may pass: the server restarting or overloaded, a request lost on the way.
TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}
_retry_policy = {"attempts": 5, "max_wait": 30.0}


def transient(exc: BaseException) -> bool:
    """Whether a failed MLflow call is worth trying again (a missing model or a bad request is not)."""
    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout)


def _before_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception()
    log.warning(
        "MLflow %s failed (%s: %s); try %d of %d in %.1f s",
        getattr(state.fn, "__name__", "call"),
        type(exc).__name__,
        str(exc).splitlines()[0][:200] if str(exc) else "",
        state.attempt_number + 1,
        _retry_policy["attempts"],
        state.next_action.sleep,
    )


def retried(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn``, tried again with exponential backoff while it fails transiently (``mlflow.retry_*``)."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            stop=tenacity.stop_after_attempt(_retry_policy["attempts"]),
            wait=tenacity.wait_exponential(multiplier=1, max=_retry_policy["max_wait"]),
            before_sleep=_before_retry,
            reraise=True,
        )
        return retrying(fn, *args, **kwargs)

    return call


def configure(cfg: Config) -> str:
    """Point MLflow at the configured tracking/registry URIs; return the experiment id (created if new)."""
    logs.quiet_mlflow_prints()
    _retry_policy.update(attempts=cfg.mlflow.retry_attempts, max_wait=cfg.mlflow.retry_max_wait_seconds)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow.registry_uri or cfg.tracking_uri)
    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return _experiment(cfg.mlflow.experiment, cfg.artifact_location)


@retried
def _experiment(name: str, artifact_location: str | None) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client(cfg: Config) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.mlflow.registry_uri or cfg.tracking_uri)


CHAMPION, PREVIOUS = "champion", "previous"


@dataclass(frozen=True)
class ChampionCheck:
    """The live champion of a model name, as compared with a newly trained model."""

    version: ModelVersion | None  # the registry's version under the champion alias; None: no champion yet
    same: bool = False  # the new model has the champion's centroids
    score: float | None = None  # the champion's silhouette on today's rows
    unscored: str | None = None  # why the champion could not be scored: promotion then fails closed


def promote(
    cfg: Config,
    name: str,
    model_uri: str,
    champion: ChampionCheck,
    swept: Sweep,
    final: Final,
    lineage: dict[str, str] | None = None,
) -> tuple[str | None, str]:
    """Register the model and move the aliases by the promotion rule; returns (version, decision).

    Fails closed: when the champion could not be scored (``champion.unscored`` says why), it keeps
    its alias unless promotion is forced; the new version is registered for inspection all the same.

    ``lineage`` (``lineage.*`` tags: the training's inputs) goes on the new version, and on the champion
    whenever this training decided it (promoted, same centroids, or kept as the better model): the next
    train of the same inputs is then skipped (``champions_lineage``). A champion kept only because it
    could not be scored is not marked, so the next run tries again.
    """
    train, champion_score, unscored = cfg.train, champion.score, champion.unscored
    if champion.same:
        mark_lineage(cfg, name, str(champion.version.version), lineage)
        return str(champion.version.version), "same centroids as the champion: kept"
    if not train.register_model:
        return None, "not registered"
    version = register(cfg, name, model_uri, lineage)
    passes_rule = swept.chosen is None or passes(swept.chosen, train)
    at_least_as_good = champion_score is None or (
        final.silhouette is not None and final.silhouette >= champion_score - train.promotion_tolerance
    )
    if champion.version is None or train.force_promote:
        promoted, decision = True, "forced" if train.force_promote else "promoted"
    elif unscored is not None:
        promoted, decision = False, f"kept the champion: {unscored}"
    else:
        promoted = passes_rule and at_least_as_good
        decision = "promoted" if promoted else "kept the champion"
    if promoted:
        make_champion(cfg, name, version, champion.version)
    elif unscored is None:
        mark_lineage(cfg, name, str(champion.version.version), lineage)  # kept on these inputs, on the evidence
    return version, decision


def make_champion(cfg: Config, name: str, version: str, champion: ModelVersion | None) -> None:
    """Move the champion alias to ``version``, and the previous alias to the champion it replaces (if any)."""
    set_alias = retried(client(cfg).set_registered_model_alias)
    if champion is not None:
        faults.point("mlflow", f"alias {name}@{PREVIOUS}")
        set_alias(name, PREVIOUS, champion.version)
    faults.point("mlflow", f"alias {name}@{CHAMPION}")
    set_alias(name, CHAMPION, version)


def register(cfg: Config, name: str, model_uri: str, tags: dict[str, str] | None = None) -> str:
    """Register the model at ``model_uri`` as a new version of ``name``; returns the version."""
    faults.point("mlflow", f"register {name}")
    return str(retried(mlflow.register_model)(model_uri, name, tags=tags or None).version)


LINEAGE = "lineage."  # tag prefix: lineage.as_of, lineage.features, lineage.features_version, lineage.config...


def mark_lineage(cfg: Config, name: str, version: str, lineage: dict[str, str] | None) -> None:
    """Set the ``lineage.*`` tags on a model version (replacing those it had)."""
    set_tag = retried(client(cfg).set_model_version_tag)
    for key, value in (lineage or {}).items():
        faults.point("mlflow", f"tag {name} v{version} {key}")
        set_tag(name, version, key, value)


@dataclass(frozen=True)
class Lineage:
    """Whether every model's champion carries the given lineage: if not, ``differs`` says which and how."""

    champions: dict[str, object]  # model name -> its champion's ModelVersion (None: no champion)
    differs: str | None  # None: every champion carries the lineage

    def recorded(self, key: str) -> list[str]:
        """The champions' values of a ``lineage.*`` tag, sorted, each once."""
        return sorted({v.tags.get(key, "") for v in self.champions.values() if v is not None})


def champions_lineage(cfg: Config, names: list[str], lineage: dict[str, str], compared: list[str]) -> Lineage:
    """Compare the ``compared`` keys of ``lineage`` with the tags on each named model's champion.

    Fails closed: the registry is read through ``champion_version`` (tried again on a transient
    failure, then raised), so an unreachable registry stops the stage rather than reading as "no
    champion" (a blind retrain) or as "nothing changed" (a blind skip). Only a registry that answers
    "no such model or alias" counts as no champion: then the model is trained.
    """
    champions: dict[str, object] = {}
    for name in names:
        version = champions[name] = champion_version(cfg, name)
        if version is None:
            return Lineage(champions, f"{name} has no champion")
        tags = version.tags or {}
        for key in compared:
            if tags.get(key) != lineage[key]:
                was = tags.get(key, "(none)")
                return Lineage(champions, f"{name}'s champion v{version.version} has {key} {was}, now {lineage[key]}")
    return Lineage(champions, None)


@retried
def champion_version(cfg: Config, name: str) -> object | None:
    """The version under the champion alias; None when the model or the alias does not exist.

    Any other failure raises (after retries): an unreachable registry must not read as "no champion yet".
    """
    try:
        return client(cfg).get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if transient(exc):
            raise
        return None


@retried
def load_run_json(run_id: str, path: str) -> dict | None:
    """A JSON artifact of a run; None when the run has no such artifact."""
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    except MlflowException as exc:
        if transient(exc):
            raise
        return None
    except OSError:
        return None


def champion_score_today(cfg: Config, champion: object, rows: DataFrame, n: int) -> tuple[float | None, str | None]:
    """The champion's silhouette on today's rows, in its own space; or None and why it could not be scored."""
    try:
        model = spark_models.load_spark_model(cfg, f"runs:/{champion.run_id}/model")
        return sample_silhouette(model.transform(rows), clustering_column(model), n, cfg.train), None
    except Exception as exc:  # any failure to load or score: the champion stays (fail closed)
        reason = f"champion v{champion.version} could not be scored ({type(exc).__name__}: {str(exc)[:300]})"
        log.warning("%s; it keeps the alias (use --force to replace it)", reason)
        return None, reason


def load_champion(cfg: Config, layer: str, macro: str) -> tuple[PipelineModel, dict]:
    """A (layer, macro) champion, its registry facts and algorithm (its run's param), its cluster -> stable id mapping.

    Raises:
        ModelMissingError: the model has no champion (train has not run for this layer and macro).
    """
    configure(cfg)
    name = model_name(layer, macro)
    version = champion_version(cfg, name)
    if version is None:
        raise ModelMissingError(
            f"registered model {name} has no '{CHAMPION}' alias at {cfg.tracking_uri}; run the train stage "
            f"for this as_of (microseg train) before assign"
        )
    model = retried(spark_models.load_spark_model)(cfg, f"models:/{name}@{CHAMPION}")
    ids = load_run_json(version.run_id, "segment_ids.json") or {"cluster_to_id": {}}
    return model, {
        "model": name,
        "version": str(version.version),
        "run_id": version.run_id,
        "algorithm": retried(client(cfg).get_run)(version.run_id).data.params.get("algorithm"),
        "cluster_to_id": {int(c): int(i) for c, i in ids["cluster_to_id"].items()},
    }
