"""Training on generated data with planted groups: k chosen on evidence, MLflow runs and registry, stable ids."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from microseg import tables
from microseg.cli import main
from microseg.config import DatagenConfig
from microseg.datagen import GROUPS, generate
from microseg.identity import customer_id_from_crm
from microseg.models import ari_between
from microseg.pipeline import run_pipeline

pytestmark = pytest.mark.integration

CUSTOMERS = 3000
ALGORITHMS = ["kmeans", "bisecting_kmeans", "gaussian_mixture"]
FIRST, LATER = dt.date(2025, 12, 31), dt.date(2026, 1, 15)
SETTINGS = [
    "train.by_macro=false",
    "train.layers.engagement=null",
    f"train.layers.value.algorithms=[{', '.join(ALGORITHMS)}]",
    "train.k_min=2",
    "train.k_max=6",
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
]
MODEL = "microseg-value-all"


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory, make_config):
    root = tmp_path_factory.mktemp("training")
    data, lake = root / "data", root / "lake"
    generate(spark, DatagenConfig(customers=CUSTOMERS, seed=5, partitions=2), str(data))
    cfg = make_config(f"sources.root={data}", *SETTINGS, lake=lake)
    quiet = {"progress": lambda _: None}
    run_pipeline(spark, cfg, as_of=FIRST, stages=["ingest", "clean", "quality", "features", "train", "assign"], **quiet)
    truth = spark.read.parquet(str(data / "_ground_truth")).select(
        customer_id_from_crm(F.col("customer_ref")).alias("customer_id"), "group"
    )
    args = [f"--set={s}" for s in [*SETTINGS, f"sources.root={data}", f"lake.root={lake}"]]
    return {"cfg": cfg, "truth": truth, "args": args}


def assignments(spark, cfg, as_of):
    rows = tables.read(spark, cfg, "gold.segment_assignments")
    return rows.where((F.col("as_of") == F.lit(as_of)) & (F.col("layer") == "value"))


def test_value_layer_finds_the_planted_groups(spark, trained):
    cfg = trained["cfg"]
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert int(client.get_run(champion.run_id).data.params["k"]) == len(GROUPS)
    joined = assignments(spark, cfg, FIRST).join(trained["truth"], "customer_id")
    assert joined.count() > 0.9 * CUSTOMERS
    assert ari_between(joined, "segment_id", "group") >= 0.8


def test_mlflow_parent_child_runs_metrics_artifacts_and_alias(spark, trained):
    cfg = trained["cfg"]
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'training'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["as_of"] == str(FIRST) and parent.data.tags["git_commit"]
    assert parent.data.tags["input_version.gold.customer_features"].isdigit()
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    candidates = [r for r in children if r.data.tags["kind"] == "candidate"]
    finals = [r for r in children if r.data.tags["kind"] == "final"]
    assert len(candidates) == len(ALGORITHMS) * 5 and len(finals) == 1
    for run in candidates:
        assert {"silhouette", "smallest_share", "stability_ari"} <= set(run.data.metrics)
        expected = "bic" if run.data.params["algorithm"] == "gaussian_mixture" else "wssse"
        assert expected in run.data.metrics
    final = finals[0]
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id)}
    expected = {"model", "k_selection.png", "k_selection.json", "centroids.json", "segment_sizes.json"}
    assert expected | {"segment_ids.json"} <= artifacts
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == final.info.run_id


def test_retrain_later_keeps_segment_ids_and_moves_aliases(spark, trained):
    cfg = trained["cfg"]
    assert main(["run", *trained["args"], "--as-of", str(LATER), "--stage", "features"]) == 0
    assert main(["train", *trained["args"], "--as-of", str(LATER), "--force"]) == 0
    assert main(["run", *trained["args"], "--as-of", str(LATER), "--stage", "assign"]) == 0
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    previous = client.get_model_version_by_alias(MODEL, "previous")
    assert (int(champion.version), int(previous.version)) == (2, 1)
    ids = client.download_artifacts(champion.run_id, "segment_ids.json")

    mapping = json.loads(Path(ids).read_text())
    assert len(mapping["distances"]) >= 1  # clusters were matched to the previous champion's
    before = assignments(spark, cfg, FIRST).select("customer_id", F.col("segment_id").alias("before"))
    after = assignments(spark, cfg, LATER).select("customer_id", F.col("segment_id").alias("after"))
    both = before.join(after, "customer_id")
    same = both.where(F.col("before") == F.col("after")).count()
    assert both.count() > 0.9 * CUSTOMERS
    assert same / both.count() >= 0.9
    assert after.select("customer_id").distinct().count() == after.count()
