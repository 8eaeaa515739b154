"""Nothing recomputed that did not change (issue 14, item 6): features, train and profile of an as_of whose
inputs have not changed are skipped, each with a line that says why; a changed input, or --retrain for
train, runs them again.

Silver is written directly (600 customers in three order patterns, orders only), so the features stage
is the first one to run: real Spark, Delta, and MLflow tracking and registry in SQLite. The clean stage
is not run between two features runs (it rewrites every silver table today); a silver change is made
here by hand. The tests share one lake and run in order: each starts from the state the one before left.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from microseg.cli import main
from microseg.runtime import lake, tables
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

AS_OF = dt.date(2025, 6, 30)
MODEL = "microseg-value-all"
SETTINGS = [
    f"run.as_of={AS_OF}",
    "train.by_macro=false",
    "train.layers.engagement=null",
    "train.layers.preference=null",
    "train.layers.value.algorithms=[kmeans]",
    "train.k_min=2",
    "train.k_max=3",
    "train.min_macro_size=100",
]
FEATURES = lake.CUSTOMER_FEATURES.name
TRAINING_RUNS = "tags.kind = 'training'"


def order(order_id: str, customer_id: str, ts: dt.datetime, value: float, discount: float) -> dict:
    """A silver.orders row (columns left out are null)."""
    return {"order_id": order_id, "customer_id": customer_id, "order_ts": ts, "currency": "EUR", "amount": value,
            "amount_base": value, "discount_base": discount, "channel": "web", "is_return": False}  # fmt: skip


def silver_rows(seed: int = 3) -> tuple[list[dict], list[dict]]:
    """600 customers: frequent big spenders, one-off lapsed buyers, and discount hunters."""
    rng = random.Random(seed)
    customers, orders = [], []
    for i in range(600):
        group = i % 3
        cid = f"c{i:03d}"
        signup = AS_OF - dt.timedelta(days=400 + rng.randrange(300))
        customers.append({"customer_id": cid, "crm_id": f"crm{i}", "country": "GB", "signup_date": signup,
                          "consent_email": True, "consent_profiling": True})  # fmt: skip
        count, days, amount, discount = [(10, 60, 300.0, 0.0), (1, 330, 40.0, 0.0), (5, 150, 80.0, 0.3)][group]
        for n in range(count):
            ts = dt.datetime.combine(AS_OF - dt.timedelta(days=1 + rng.randrange(days)), dt.time(12))
            value = round(amount * rng.uniform(0.8, 1.2), 2)
            orders.append(order(f"{cid}-o{n}", cid, ts, value, round(value * discount, 2)))
    return customers, orders


@pytest.fixture(scope="module")
def lake_cfg(spark, make_config):
    cfg = make_config(*SETTINGS)
    customers, orders = silver_rows()
    tables.overwrite(spark.createDataFrame(customers, lake.CUSTOMERS.ddl), cfg, lake.CUSTOMERS)
    tables.overwrite(spark.createDataFrame(orders, lake.ORDERS.ddl), cfg, lake.ORDERS)
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    args = [f"--set={s}" for s in [*SETTINGS, f"lake.root={cfg.lake.root}", "spark.master=local[2]"]]
    return {"cfg": cfg, "client": client, "args": args}


def quiet_run(spark, cfg, stages, **kwargs):
    return run_pipeline(spark, cfg, as_of=AS_OF, stages=stages, progress=lambda _: None, **kwargs)


def last_log(spark, cfg, stage):
    """The latest ops.run_log row of a stage for AS_OF."""
    rows = tables.read(spark, cfg, "ops.run_log").where((F.col("stage") == stage) & (F.col("as_of") == F.lit(AS_OF)))
    return rows.orderBy(F.col("logged_at").desc()).first()


def test_features_rerun_without_a_silver_change_is_skipped(spark, lake_cfg):
    cfg = lake_cfg["cfg"]
    first = quiet_run(spark, cfg, ["features"]).report("features")
    assert first.entries[0].rows_written == 600 and not first.info.get("skipped")
    version = tables.version(spark, cfg, FEATURES)
    again = quiet_run(spark, cfg, ["features"]).report("features")
    assert again.info["skipped"].startswith(f"features: skipped, as_of {AS_OF} unchanged since run ")
    silver = {name: tables.version(spark, cfg, f"silver.{name}") for name in ("customers", "orders")}
    assert f"(customers v{silver['customers']}, orders v{silver['orders']})" in again.info["skipped"]
    assert tables.version(spark, cfg, FEATURES) == version  # nothing written
    logged = last_log(spark, cfg, "features")
    assert (logged["status"], logged["rows_written"]) == ("ok", 0)
    assert '"skipped": "features: skipped' in logged["details"]


def test_features_recompute_after_a_silver_table_changes(spark, lake_cfg):
    cfg = lake_cfg["cfg"]
    version = tables.version(spark, cfg, FEATURES)
    before = tables.read(spark, cfg, FEATURES).where(F.col("customer_id") == "c001").first()
    # One more order for c001 (a lapsed one-off buyer): silver.orders gets a new Delta version.
    extra = spark.createDataFrame([order("c001-new", "c001", dt.datetime(2025, 6, 29, 9), 500.0, 0.0)], lake.ORDERS.ddl)
    orders = tables.read(spark, cfg, lake.ORDERS).unionByName(extra).localCheckpoint()
    tables.overwrite(orders, cfg, lake.ORDERS)
    report = quiet_run(spark, cfg, ["features"]).report("features")
    assert not report.info.get("skipped") and report.entries[0].rows_written == 600
    assert tables.version(spark, cfg, FEATURES) == version + 1
    after = tables.read(spark, cfg, FEATURES).where(F.col("customer_id") == "c001").first()
    assert (before["frequency_365d"], after["frequency_365d"]) == (1, 2)
    # Rows of the snapshot changed behind the stage's back: the next run writes them again.
    tables.delete(spark, cfg, FEATURES, f"as_of = DATE'{AS_OF}' AND customer_id = 'c002'")
    assert not quiet_run(spark, cfg, ["features"]).report("features").info.get("skipped")
    assert tables.read(spark, cfg, FEATURES).where(F.col("as_of") == F.lit(AS_OF)).count() == 600
    assert quiet_run(spark, cfg, ["features"]).report("features").info.get("skipped")


def training_runs(lake_cfg):
    client = lake_cfg["client"]
    experiment = client.get_experiment_by_name(lake_cfg["cfg"].mlflow.experiment)
    return len(client.search_runs([experiment.experiment_id], filter_string=TRAINING_RUNS))


def versions(lake_cfg):
    return sorted(int(v.version) for v in lake_cfg["client"].search_model_versions(f"name = '{MODEL}'"))


def test_first_training_records_its_lineage(spark, lake_cfg):
    cfg, client = lake_cfg["cfg"], lake_cfg["client"]
    result = quiet_run(spark, cfg, ["train", "assign", "profile"])
    assert not result.report("train").info.get("skipped") and not result.report("profile").info.get("skipped")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    table_version = str(tables.version(spark, cfg, FEATURES))
    lineage = {k: v for k, v in champion.tags.items() if k.startswith("lineage.")}
    assert set(lineage) == {f"lineage.{k}" for k in ("as_of", "features", "features_version", "config", "code")}
    assert lineage["lineage.as_of"] == str(AS_OF) and lineage["lineage.features_version"] == table_version
    assert lineage["lineage.features"].startswith("600:")
    run_tags = client.get_run(champion.run_id).data.tags
    assert {k: run_tags[k] for k in lineage} == lineage  # the final run carries it too


def test_a_second_train_with_nothing_changed_is_skipped(spark, lake_cfg, capsys):
    runs, registered = training_runs(lake_cfg), versions(lake_cfg)
    capsys.readouterr()
    # --rerun: past the run-level "already completed" check, so that the stage itself decides.
    assert main(["run", *lake_cfg["args"], "--stage", "train", "--rerun"]) == 0
    out = "".join(capsys.readouterr())
    v = tables.version(spark, lake_cfg["cfg"], FEATURES)
    expected = (
        f"train: skipped, every champion (1 model) was trained on {FEATURES} v{v} for as_of {AS_OF} "
        "(600 rows, fingerprint "
    )
    assert expected in out and "(--retrain to train again)" in out
    assert (training_runs(lake_cfg), versions(lake_cfg)) == (runs, registered)
    logged = last_log(spark, lake_cfg["cfg"], "train")
    assert logged["status"] == "ok" and logged["source"] == MODEL and "train: skipped" in logged["details"]
    # A setting train does not read changes nothing either.
    unrelated = ["--set", "profile.k_anonymity=7", "--set", "assign.membership_threshold=0.3"]
    assert main(["run", *lake_cfg["args"], "--stage", "train", "--rerun", *unrelated]) == 0
    assert "train: skipped" in "".join(capsys.readouterr())
    assert training_runs(lake_cfg) == runs


def test_retrain_trains_again(spark, lake_cfg, capsys):
    runs, registered = training_runs(lake_cfg), versions(lake_cfg)
    capsys.readouterr()
    assert main(["run", *lake_cfg["args"], "--stage", "train", "--retrain"]) == 0
    out = "".join(capsys.readouterr())
    assert "train: skipped" not in out and "training: MLflow parent run" in out
    assert training_runs(lake_cfg) == runs + 1
    # The same rows fit the same model: nothing new registered, and the champion still carries the lineage.
    assert versions(lake_cfg) == registered
    assert main(["train", *lake_cfg["args"], "--rerun"]) == 0
    assert "train: skipped" in "".join(capsys.readouterr())


def test_the_same_rows_written_again_are_no_change_for_train(spark, lake_cfg, capsys):
    cfg = lake_cfg["cfg"]
    snapshot = tables.read(spark, cfg, FEATURES).where(F.col("as_of") == F.lit(AS_OF)).localCheckpoint()
    tables.replace_where(snapshot, cfg, FEATURES, f"as_of = '{AS_OF}'")
    now = tables.version(spark, cfg, FEATURES)
    runs = training_runs(lake_cfg)
    capsys.readouterr()
    assert main(["train", *lake_cfg["args"], "--rerun"]) == 0
    out = "".join(capsys.readouterr())
    assert "train: skipped" in out and f"the same rows at v{now})" in out
    assert training_runs(lake_cfg) == runs


def test_a_changed_snapshot_or_config_trains_again(spark, lake_cfg, capsys):
    cfg = lake_cfg["cfg"]
    runs = training_runs(lake_cfg)
    snapshot = tables.read(spark, cfg, FEATURES).where(F.col("as_of") == F.lit(AS_OF))
    changed = snapshot.withColumn(
        "monetary_365d",
        F.when(F.col("customer_id") == "c000", F.col("monetary_365d") + 1).otherwise(F.col("monetary_365d")),
    ).localCheckpoint()
    tables.replace_where(changed, cfg, FEATURES, f"as_of = '{AS_OF}'")
    capsys.readouterr()
    assert main(["train", *lake_cfg["args"], "--rerun"]) == 0
    assert "train: skipped" not in "".join(capsys.readouterr())
    assert training_runs(lake_cfg) == runs + 1
    champion = lake_cfg["client"].get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["lineage.features_version"] == str(tables.version(spark, cfg, FEATURES))
    # A setting train reads: trains again.
    assert main(["train", *lake_cfg["args"], "--rerun", "--set", "train.max_iter=39"]) == 0
    assert "train: skipped" not in "".join(capsys.readouterr())
    assert training_runs(lake_cfg) == runs + 2


def test_profile_rerun_with_nothing_changed_is_skipped(spark, lake_cfg, capsys):
    cfg = lake_cfg["cfg"]
    # assign again: the same champions write the same assignments and profiles (new files, same rows).
    assert main(["run", *lake_cfg["args"], "--stage", "assign", "--stage", "profile", "--rerun"]) == 0
    capsys.readouterr()
    assert main(["run", *lake_cfg["args"], "--stage", "assign", "--stage", "profile", "--rerun"]) == 0
    out = "".join(capsys.readouterr())
    log = tables.read(spark, cfg, "ops.run_log").where((F.col("stage") == "profile") & F.col("status").eqNullSafe("ok"))
    computed = log.where(~F.col("details").contains('"skipped"')).orderBy(F.col("logged_at").desc()).first()
    assert f"profile: skipped, as_of {AS_OF} unchanged since run {computed['run_id']}: " in out
    logged = last_log(spark, cfg, "profile")
    assert logged["status"] == "ok" and '"skipped": "profile: skipped' in logged["details"]
    assert f"segment report: {json.loads(computed['details'])['report']}" in out  # the report it relies on
    # A setting the report reads: profiled again.
    assert main(["run", *lake_cfg["args"], "--stage", "profile", "--rerun", "--set", "profile.report_sample=200"]) == 0
    assert "profile: skipped" not in "".join(capsys.readouterr())
