"""The train stage on a hand-made feature table: promotion fails closed, and the refit is the swept model.

gold.customer_features is written directly (three planted groups in the value layer's features),
so these tests need no other stage: real Spark, Delta and MLflow tracking and registry.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F
from sklearn.metrics import adjusted_rand_score

from microseg.cli import main
from microseg.features.catalog import load_catalog
from microseg.runtime import tables
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

FIRST, SECOND = dt.date(2025, 6, 30), dt.date(2025, 7, 31)
MODEL = "microseg-value-all"
SETTINGS = [
    "train.by_macro=false",
    "train.layers.engagement=null",
    "train.layers.preference=null",
    "train.layers.value.algorithms=[kmeans, bisecting_kmeans]",
    "train.k_min=2",
    "train.k_max=5",
]
# recency_days, frequency_365d, monetary_365d, avg_order_value, tenure_days, discount_share
GROUPS = [(20, 12, 3000, 250, 700, 0.05), (300, 1, 80, 80, 400, 0.0), (60, 5, 600, 120, 90, 0.6)]


def features(spark, as_of, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    rows = []
    for g, centre in enumerate(GROUPS):
        for i in range(400):
            values = [max(0.0, rng.normal(c * (1 + shift), abs(c) * 0.08 + 0.01)) for c in centre]
            rows.append((f"c{g}-{i}", as_of, "active", g, *values))
    columns = "customer_id STRING, as_of DATE, macro_segment STRING, grp INT, " + ", ".join(
        f"{name} DOUBLE"
        for name in ("recency_days", "frequency_365d", "monetary_365d", "avg_order_value", "tenure_days",
                     "discount_share")
    )  # fmt: skip
    return spark.createDataFrame(rows, columns)


@pytest.fixture(scope="module")
def lake(spark, make_config):
    cfg = make_config(*SETTINGS)
    first = features(spark, FIRST, seed=1)
    tables.replace_where(first.drop("grp"), cfg, "gold.customer_features", f"as_of = '{FIRST}'")
    result = run_pipeline(spark, cfg, as_of=FIRST, stages=["train"])
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    args = [f"--set={s}" for s in [*SETTINGS, f"lake.root={cfg.lake.root}", "spark.master=local[2]"]]
    return {"cfg": cfg, "client": client, "truth": first, "result": result, "args": args}


def test_refit_is_the_swept_model_and_finds_the_groups(spark, lake):
    client, cfg = lake["client"], lake["cfg"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    run = client.get_run(champion.run_id)
    assert int(run.data.params["k"]) == len(GROUPS)
    # The MLlib refit labels the sweep sample as its scikit-learn candidate did, and keeps its silhouette.
    assert run.data.metrics["refit_agreement_ari"] >= 0.9
    assert abs(run.data.metrics["silhouette_gap"]) <= cfg.train.refit_tolerance
    assert run.data.metrics["silhouette_gap"] == pytest.approx(
        run.data.metrics["sweep_silhouette"] - run.data.metrics["silhouette"]
    )
    # Independently of the train stage's own check: the champion's labels against the planted groups.
    import mlflow.spark

    model = mlflow.spark.load_model(f"models:/{MODEL}@champion")
    scored = model.transform(lake["truth"]).select("grp", "cluster").collect()
    assert adjusted_rand_score([r["grp"] for r in scored], [r["cluster"] for r in scored]) >= 0.95
    # Candidates: one child run each, their metrics and the table as one artifact of the final run.
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.data.tags['mlflow.parentRunId']}'"
    )
    candidates = [r for r in children if r.data.tags["kind"] == "candidate"]
    assert len(candidates) == 2 * 4 and all(r.info.status == "FINISHED" for r in candidates)
    assert all({"silhouette", "stability_ari", "wssse", "fit_seconds"} <= set(r.data.metrics) for r in candidates)
    assert {"k_selection.json", "k_selection.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_champion_that_cannot_be_scored_keeps_its_alias(spark, lake, capsys):
    client, cfg = lake["client"], lake["cfg"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    # The champion's artifacts are lost (a purged bucket, say): it cannot be loaded, so not scored.
    shutil.rmtree(Path(urlparse(client.get_run(champion.run_id).info.artifact_uri).path))
    second = features(spark, SECOND, seed=2, shift=0.3)
    tables.replace_where(second.drop("grp"), cfg, "gold.customer_features", f"as_of = '{SECOND}'")
    capsys.readouterr()
    assert main(["train", *lake["args"], "--as-of", str(SECOND)]) == 0
    out = capsys.readouterr().out
    kept = client.get_model_version_by_alias(MODEL, "champion")
    assert kept.version == champion.version
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    assert versions == [int(champion.version), int(champion.version) + 1]  # registered, not promoted
    new_run = client.get_run(client.get_model_version(MODEL, str(versions[-1])).run_id)
    decision = new_run.data.tags["promotion"]
    assert decision.startswith(f"kept the champion: champion v{champion.version} could not be scored")
    assert "could not be scored" in out  # the run summary says so too
    # --force still promotes, and the former champion becomes 'previous'.
    assert main(["train", *lake["args"], "--as-of", str(SECOND), "--force"]) == 0
    forced = client.get_model_version_by_alias(MODEL, "champion")
    assert int(forced.version) == versions[-1] + 1
    assert client.get_model_version_by_alias(MODEL, "previous").version == champion.version


def test_a_layer_without_informative_features_is_one_segment_registered_once(spark, make_config, capsys):
    """Constant and null features (an orders-only feed, say): k=1 with the reason, no second version on a
    retrain, and assign puts everyone in the one segment."""
    cfg = make_config(*SETTINGS)
    flat = spark.createDataFrame(
        [(f"f{i}", FIRST, "active", 30.0, 1.0, None, 50.0, 100.0, None) for i in range(600)],
        "customer_id STRING, as_of DATE, macro_segment STRING, recency_days DOUBLE, frequency_365d DOUBLE, "
        "monetary_365d DOUBLE, avg_order_value DOUBLE, tenure_days DOUBLE, discount_share DOUBLE",
    )
    # Every catalog feature, as assign's profiles read them all: the others null.
    others = [F.lit(None).cast("double").alias(f) for f in load_catalog(cfg).names if f not in flat.columns]
    tables.replace_where(flat.select("*", *others), cfg, "gold.customer_features", f"as_of = '{FIRST}'")
    args = [f"--set={s}" for s in [*SETTINGS, f"lake.root={cfg.lake.root}", "spark.master=local[2]"]]
    capsys.readouterr()
    assert main(["train", *args, "--as-of", str(FIRST)]) == 0
    out = capsys.readouterr().out
    assert "k=1: one segment: no informative feature (" in out
    assert "dropped recency_days: constant (30 for everyone)" in out and "dropped monetary_365d: all null" in out
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    run = client.get_run(champion.run_id)
    assert (run.data.params["k"], run.data.params["features"]) == ("1", "")
    assert run.data.tags["single_segment_reason"].startswith("one segment: no informative feature")
    assert "feature_screening.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # A retrain on the same rows finds the same single segment: the champion stays, no new version.
    assert main(["train", *args, "--as-of", str(FIRST), "--retrain"]) == 0
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == [champion.version]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version
    assert main(["run", *args, "--as-of", str(FIRST), "--stage", "assign"]) == 0
    assigned = tables.read(spark, cfg, "gold.segment_assignments").where(F.col("as_of") == F.lit(FIRST))
    assert {(r["segment_id"], r["count"]) for r in assigned.groupBy("segment_id").count().collect()} == {
        ("value-all-0", 600)
    }
