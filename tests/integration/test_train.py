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
from sklearn.metrics import adjusted_rand_score

from microseg.cli import main
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
