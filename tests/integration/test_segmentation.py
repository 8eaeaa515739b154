"""Segmentation on generated data with planted groups and planted movers, snapshot by snapshot.

FIRST: train (k chosen on evidence), assign and profile. MOVED: a week later, with the same
champion, only the planted movers (lapsed customers who came back with big orders) change
segment. LATER: a forced retrain keeps segment ids stable.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from microseg.cli import main
from microseg.runtime import tables
from microseg.runtime.keys import customer_id_from_crm
from microseg.segmentation.metrics import ari_between
from microseg.stages import run_pipeline
from microseg.synthetic.groups import GROUPS

pytestmark = pytest.mark.integration

CUSTOMERS = 3000
ALGORITHMS = ["kmeans", "bisecting_kmeans", "gaussian_mixture"]
# The movers' burst falls on the day after FIRST; a one-day step keeps everyone else in place.
FIRST, MOVED, LATER = dt.date(2025, 12, 31), dt.date(2026, 1, 1), dt.date(2026, 1, 15)
REPO = Path(__file__).resolve().parents[2]
SETTINGS = [
    "train.by_macro=false",
    "train.layers.engagement=null",
    "train.layers.preference=null",
    f"train.layers.value.algorithms=[{', '.join(ALGORITHMS)}]",
    "train.k_min=2",
    "train.k_max=6",
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
]
MODEL = "microseg-value-all"


@pytest.fixture(scope="module")
def trained(spark, generated, copy_lake, make_config):
    # The data (CUSTOMERS, seed 5, movers 0.1 with their burst the day after FIRST) and the lake through
    # the features of FIRST are shared with test_pipeline_e2e (tests/integration/conftest.py); the copy is ours.
    data, manifest = generated
    assert manifest["customers"] == CUSTOMERS
    lake = copy_lake("training")
    cfg = make_config(f"sources.root={data}", *SETTINGS, lake=lake)
    quiet = {"progress": lambda _: None}
    stages = ["train", "assign", "profile"]
    run_pipeline(spark, cfg, as_of=FIRST, stages=stages, **quiet)
    truth = spark.read.parquet(str(data / "_ground_truth")).select(
        customer_id_from_crm(F.col("customer_ref")).alias("customer_id"), "group", "mover"
    )
    args = [f"--set={s}" for s in [*SETTINGS, f"sources.root={data}", f"lake.root={lake}"]]
    return {"cfg": cfg, "truth": truth, "args": args, "lake": lake}


@pytest.fixture(scope="module")
def moved(spark, trained):
    """A week later, with the same champion: features, assign and profile for MOVED."""
    assert main(["run", *trained["args"], "--as-of", str(MOVED), "--stage", "features", "--stage", "assign",
                 "--stage", "profile"]) == 0  # fmt: skip
    return trained


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
    assert ari_between(joined, "segment_id", "group") >= 0.95
    # The registered MLlib refit labels the sweep sample as the scikit-learn candidate it was chosen from.
    run = client.get_run(champion.run_id)
    assert run.data.metrics["refit_agreement_ari"] >= 0.9
    assert run.data.params["algorithm"] in ALGORITHMS


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


def table_rows(spark, cfg, name, columns=None):
    df = tables.read(spark, cfg, name)
    df = df.drop("memberships") if "memberships" in df.columns else df
    return sorted(map(tuple, df.select(*(columns or df.columns)).collect()), key=str)


def test_history_shows_exactly_the_planted_movers(spark, moved):
    cfg = moved["cfg"]
    history = tables.read(spark, cfg, "gold.segment_history").where(F.col("layer") == "value")
    closed = {r["customer_id"] for r in history.where(F.col("valid_to") == F.lit(MOVED)).collect()}
    reopened = {r["customer_id"] for r in history.where(F.col("valid_from") == F.lit(MOVED)).collect()}
    featured = assignments(spark, cfg, MOVED).select("customer_id")
    movers = {r["customer_id"] for r in moved["truth"].where("mover").join(featured, "customer_id").collect()}
    assert len(movers) > 20
    assert closed == reopened == movers
    assert history.where("is_current").count() == featured.count()
    # every mover now sits where the loyal high spenders are
    loyal = assignments(spark, cfg, MOVED).join(
        moved["truth"].where(F.col("group") == "loyal_high_spender"), "customer_id"
    )
    loyal_segment = loyal.groupBy("segment_id").count().orderBy(F.desc("count")).first()["segment_id"]
    now = assignments(spark, cfg, MOVED).where(F.col("customer_id").isin(list(movers)))
    assert {r["segment_id"] for r in now.select("segment_id").distinct().collect()} == {loyal_segment}


def test_migration_matrix_matches_the_assignments(spark, moved):
    cfg = moved["cfg"]
    recorded = tables.read(spark, cfg, "gold.segment_migrations").where(
        (F.col("as_of") == F.lit(MOVED)) & (F.col("layer") == "value")
    )
    got = {(r["from_segment"], r["to_segment"]): r["customers"] for r in recorded.collect()}
    before = assignments(spark, cfg, FIRST).select("customer_id", F.col("segment_id").alias("a"))
    after = assignments(spark, cfg, MOVED).select("customer_id", F.col("segment_id").alias("b"))
    expected = {
        (r["a"] or "(entered)", r["b"] or "(left)"): r["count"]
        for r in before.join(after, "customer_id", "full_outer").groupBy("a", "b").count().collect()
    }
    assert got == expected
    moves = sum(n for (a, b), n in got.items() if a != b and a != "(entered)" and b != "(left)")
    movers = moved["truth"].where("mover").join(after, "customer_id").count()
    assert moves == movers
    shares = recorded.groupBy("from_segment").agg(F.sum("share").alias("s")).collect()
    assert all(abs(r["s"] - 1.0) < 1e-3 for r in shares)


def test_rerunning_assign_leaves_assignments_and_history_unchanged(spark, moved):
    cfg = moved["cfg"]
    before = (table_rows(spark, cfg, "gold.segment_assignments"), table_rows(spark, cfg, "gold.segment_history"))
    assert main(["run", *moved["args"], "--as-of", str(MOVED), "--stage", "assign", "--rerun"]) == 0
    after = (table_rows(spark, cfg, "gold.segment_assignments"), table_rows(spark, cfg, "gold.segment_history"))
    assert after == before
    changes = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", 0)
        .load(tables.table_path(cfg, "gold.segment_assignments"))
    )
    assert changes.where(F.col("_change_type") == "insert").count() > 0  # consumers can read the change feed


def test_profiles_label_segments_and_hide_small_ones(spark, moved):
    cfg = moved["cfg"]
    profiles = tables.read(spark, cfg, "gold.segment_profiles").where(F.col("as_of") == F.lit(MOVED)).collect()
    assert sum(p["size"] for p in profiles if p["layer"] == "value") == assignments(spark, cfg, MOVED).count()
    for p in profiles:
        if p["size"] >= cfg.profile.k_anonymity:
            assert p["label"] and p["mean_monetary_365d"] is not None and p["z_monetary_365d"] is not None
        else:
            assert p["label"] is None and p["mean_monetary_365d"] is None
    labels = [p["label"] for p in profiles if p["label"] is not None]
    # Labels compare a segment with the other customers of its (layer, macro) and tell siblings apart.
    assert any(label.startswith("spends more, ") for label in labels)  # "spends more, bigger baskets and ..."
    assert all(label.endswith("customers") or "(segment " in label for label in labels)
    assert len(labels) == len(set(labels))
    assert all(p["z_in_macro_monetary_365d"] is not None for p in profiles if p["label"] is not None)
    assigned = assignments(spark, cfg, MOVED).select("segment_id", "segment_label").distinct().collect()
    by_profile = {p["segment_id"]: p["label"] for p in profiles}
    assert all(by_profile[r["segment_id"]] == r["segment_label"] for r in assigned)


EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
PHONE = r"(\+44|0044)[0-9 ()-]{9,}"


def test_report_is_self_contained_with_every_plot_and_no_contact_data(spark, moved):
    import re

    cfg = moved["cfg"]
    reports = sorted(Path(cfg.lake_root, "reports").glob(f"segment_report_{MOVED}_*.html"))
    assert reports
    text = reports[-1].read_text()
    images = re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    alts = [alt for alt, _ in images]
    # Sections per layer and macro segment (train.by_macro: false here: the one macro segment "all").
    assert "value all segment sizes" in alts and "value all z-score heatmap" in alts and "value all projection" in alts
    assert "value migrations" in alts and "value all k selection" in alts
    assert "<h3>value / all</h3>" in text
    assert all(len(data) > 1000 for _, data in images)
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing fetched
    assert not re.search(EMAIL, text) and not re.search(PHONE, text)
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.kind = 'report' and tags.as_of = '{MOVED}'"
    )
    assert runs and reports[-1].name in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_explorer_notebook_executes(moved):
    import os

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / "segment_explorer.ipynb", as_version=4)
    settings = [*SETTINGS, f"lake.root={moved['lake']}"]
    env = {"MICROSEG_CONF": str(REPO / "conf" / "local.yaml"), "MICROSEG_SET": json.dumps(settings)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 3


def test_retrain_later_keeps_segment_ids_and_moves_aliases(spark, moved):
    trained = moved
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
