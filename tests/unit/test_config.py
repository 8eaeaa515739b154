from pathlib import Path

import pytest

from microseg.runtime.errors import ConfigError
from microseg.runtime.loader import load_config, parse_override

REPO = Path(__file__).resolve().parents[2]


def write_env(tmp_path: Path, text: str) -> Path:
    (tmp_path / "base.yaml").write_text((REPO / "conf" / "base.yaml").read_text())
    env = tmp_path / "env.yaml"
    env.write_text(text)
    return env


def test_defaults_and_overlay(tmp_path):
    cfg = load_config(write_env(tmp_path, "env: test\ntrain:\n  k_max: 7\n"))
    assert cfg.env == "test"
    assert cfg.train.k_max == 7
    assert cfg.train.layers["value"].features[0] == "recency_days"  # from base.yaml
    assert cfg.conf_dir == str(tmp_path)


def test_unknown_key_names_file_and_key(tmp_path):
    env = write_env(tmp_path, "lake:\n  rooot: /x\n")
    with pytest.raises(ConfigError) as err:
        load_config(env)
    message = str(err.value)
    assert str(env) in message
    assert "lake.rooot" in message
    assert "unknown key" in message


def test_wrong_type_names_key_and_expected_type(tmp_path):
    env = write_env(tmp_path, "train:\n  k_max: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(env)
    message = str(err.value)
    assert "train.k_max" in message and str(env) in message
    assert "integer" in message and "'many'" in message


def test_set_overrides_win_and_are_typed(tmp_path):
    env = write_env(tmp_path, "lake:\n  root: /from-file\n")
    cfg = load_config(env, ["lake.root=/from-set", "mlflow.tracking_uri=sqlite:////tmp/x.db", "train.k_max=3"])
    assert cfg.lake.root == "/from-set"
    assert cfg.tracking_uri == "sqlite:////tmp/x.db"
    assert cfg.train.k_max == 3


def test_bad_override_type_names_set(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write_env(tmp_path, "{}\n"), ["train.seed=abc"])
    assert "--set train.seed=abc" in str(err.value)


def test_env_interpolation(tmp_path, monkeypatch):
    env = write_env(tmp_path, "lake:\n  root: ${MS_TEST_LAKE}\nmlflow:\n  experiment: ${MS_TEST_EXP:-fallback}\n")
    monkeypatch.setenv("MS_TEST_LAKE", "/lakes/one")
    monkeypatch.delenv("MS_TEST_EXP", raising=False)
    cfg = load_config(env)
    assert cfg.lake.root == "/lakes/one"
    assert cfg.mlflow.experiment == "fallback"


def test_missing_env_variable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MS_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(write_env(tmp_path, "lake:\n  root: ${MS_TEST_UNSET}\n"))
    assert "MS_TEST_UNSET" in str(err.value) and "lake.root" in str(err.value)


def test_default_tracking_uri_is_absolute_sqlite_under_lake(tmp_path):
    cfg = load_config(write_env(tmp_path, "{}\n"), [f"lake.root={tmp_path}/lake"])
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/lake/mlflow.db"
    assert cfg.artifact_location == f"{tmp_path}/lake/mlflow-artifacts"


def test_unknown_stage_rejected_before_anything_runs(tmp_path):
    from microseg.stages import STAGES, run_pipeline

    cfg = load_config(write_env(tmp_path, "run:\n  stages: [ingest, polish]\n"))
    with pytest.raises(ConfigError) as err:
        run_pipeline(None, cfg)  # no Spark session: the check comes first
    assert "run.stages has unknown stage(s) ['polish']" in str(err.value)
    assert str(list(STAGES)) in str(err.value)
    with pytest.raises(ConfigError, match="known stages"):
        run_pipeline(None, cfg, stages=["features", "segment"])


def test_parse_override_requires_equals():
    assert parse_override("a.b=3") == ("a.b", 3)
    with pytest.raises(ConfigError):
        parse_override("a.b")


def test_shipped_environments_load(monkeypatch):
    for name, value in (("MICROSEG_LAKE_ROOT", "s3a://b/lake"), ("MICROSEG_SOURCES_ROOT", "s3a://b/in")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    for name in ("local.yaml", "cluster.yaml"):
        cfg = load_config(REPO / "conf" / name)
        assert cfg.lake.root
    assert cfg.tracking_uri == "http://mlflow.internal:5000" and cfg.lake_root == "s3a://b/lake"


def test_cluster_config_names_every_unset_variable_and_never_falls_back(monkeypatch):
    for name in ("MICROSEG_LAKE_ROOT", "MICROSEG_SOURCES_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MICROSEG_LAKE_ROOT", "s3a://b/lake")
    with pytest.raises(ConfigError) as raised:
        load_config(REPO / "conf" / "cluster.yaml")
    message = str(raised.value)
    assert "2 environment variable(s)" in message
    assert "${MLFLOW_TRACKING_URI} for mlflow.tracking_uri" in message and "export MLFLOW_TRACKING_URI=" in message
    assert "${MICROSEG_SOURCES_ROOT} for sources.root" in message and "cluster.yaml" in message
    # A key given on the command line needs no variable.
    cfg = load_config(REPO / "conf" / "cluster.yaml", ["mlflow.tracking_uri=http://m:5000", "sources.root=/data"])
    assert cfg.tracking_uri == "http://m:5000"


def test_set_spark_setting_with_dots_in_its_name(tmp_path):
    cfg = load_config(write_env(tmp_path, "{}\n"), ["spark.settings.spark.driver.memory=8g"])
    assert cfg.spark.settings["spark.driver.memory"] == "8g"
    assert cfg.spark.settings["spark.ui.enabled"] == "false"  # the base file's settings stay


def test_a_layer_can_be_switched_off_and_k_range_is_checked(tmp_path):
    cfg = load_config(write_env(tmp_path, "{}\n"), ["train.layers.engagement=null"])
    assert list(cfg.train.active_layers) == ["value", "preference"]
    with pytest.raises(ConfigError, match="k_max"):
        load_config(write_env(tmp_path, "{}\n"), ["train.k_min=5", "train.k_max=3"])


def test_as_of_defaults_to_yesterday_in_utc(tmp_path):
    import datetime as dt

    from microseg.runtime.runner import snapshot_date

    cfg = load_config(write_env(tmp_path, "{}\n"))
    assert cfg.run.as_of is None
    assert snapshot_date(cfg) == dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert snapshot_date(cfg, dt.date(2025, 1, 2)) == dt.date(2025, 1, 2)
    pinned = load_config(write_env(tmp_path, "{}\n"), ["run.as_of=2025-12-31"])
    assert snapshot_date(pinned) == dt.date(2025, 12, 31)


def test_packages_follow_what_the_config_uses(tmp_path):
    """Delta always; the JDBC driver only with a jdbc source or a Hive metastore; hadoop-aws only for s3a."""
    from microseg.runtime.session import spark_packages

    env = write_env(tmp_path, "env: test\n")
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "files.yaml").write_text("sources:\n  orders:\n    format: parquet\n")
    (tmp_path / "sources" / "crm.yaml").write_text("sources:\n  crm:\n    format: jdbc\n")
    delta, postgres, aws = "io.delta:delta-spark_4.1_2.13:4.4.0", "org.postgresql:postgresql:42.7.4", "hadoop-aws"

    def packages(*overrides: str) -> list[str]:
        return spark_packages(load_config(env, ["sources.mapping=files", *overrides]))

    assert packages() == [delta]
    assert packages("sources.mapping=crm") == [delta, postgres]
    assert packages("tables.metastore=hive") == [delta, postgres]
    assert packages("lake.root=s3a://bucket/lake") == [delta, "org.apache.hadoop:hadoop-aws:3.4.2"]
    assert aws in packages("sources.root=s3a://bucket/raw")[1]
    assert packages("lake.root=abfss://c@a.dfs.core.windows.net/lake") == [delta]
    assert packages("spark.packages=[]", "spark.packages_when={}", "lake.root=s3a://b/l") == []


def test_mlflow_artifacts_default_to_the_server_or_the_lake(tmp_path):
    env = write_env(tmp_path, "env: test\n")
    assert load_config(env, ["mlflow.tracking_uri=http://mlflow:5000"]).artifact_location is None
    lake = load_config(env, ["lake.root=s3a://bucket/lake"])
    assert lake.artifact_location == "s3://bucket/lake/mlflow-artifacts"  # MLflow's name for S3
    assert load_config(env, [f"lake.root={tmp_path}/lake"]).artifact_location == f"{tmp_path}/lake/mlflow-artifacts"
