"""Typed configuration: conf/base.yaml, an environment overlay, and ``--set`` overrides.

Loading order: base.yaml (every default) <- the environment file (local.yaml,
cluster.yaml, ...) <- ``--set key=value`` overrides <- ``${ENV_VAR}`` interpolation.
The result is validated by pydantic models that forbid unknown keys, and every
error names the file (or ``--set``) that supplied the key, the key and what was
expected. Config is loaded in jobs and the CLI, never at import time.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Strict):
    master: str = "local[*]"
    app_name: str = "microseg"
    local_ip: str | None = "127.0.0.1"
    shuffle_partitions: int | None = Field(
        default=None, description="None: the number of cores in local mode, Spark's default elsewhere"
    )
    remote: str | None = Field(
        default=None, description="a Spark Connect URL (sc://host:port): run on that server instead of a local JVM"
    )
    packages: list[str] = Field(default_factory=list)
    packages_when: dict[Literal["jdbc", "s3a"], list[str]] = Field(
        default_factory=dict,
        description="further packages, only when the config uses them: jdbc (a jdbc source or a Hive metastore "
        "database), s3a (a lake or sources on s3a://)",
    )
    jars: list[str] = Field(
        default_factory=list, description="local jar files for spark.jars (an offline cluster: instead of packages)"
    )
    settings: dict[str, str] = Field(default_factory=dict)
    log_level: str = "WARN"


class LakeConfig(_Strict):
    root: str = "./lake"


class MlflowConfig(_Strict):
    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str = "microseg"
    artifact_location: str | None = None
    pip_requirements: list[str] = Field(default_factory=list)
    retry_attempts: int = Field(default=5, ge=1, description="tries of an MLflow operation on a transient failure")
    retry_max_wait_seconds: float = Field(default=30.0, gt=0, description="longest wait between two tries")


class PrivacyConfig(_Strict):
    hash_key_env: str = "MICROSEG_HASH_KEY"


class DirtRates(_Strict):
    crm_duplicate: float = Field(0.01, ge=0, le=1)
    invalid_email: float = Field(0.01, ge=0, le=1)
    malformed_line: float = Field(0.002, ge=0, le=1)
    negative_amount: float = Field(0.002, ge=0, le=1)
    future_timestamp: float = Field(0.002, ge=0, le=1)
    orphan_reference: float = Field(0.002, ge=0, le=1)
    unknown_currency: float = Field(0.002, ge=0, le=1)


class DatagenConfig(_Strict):
    customers: int = Field(20_000, ge=100, le=5_000_000)
    seed: int = 42
    out: str = "./data/synthetic"
    start_date: dt.date = dt.date(2024, 1, 1)
    end_date: dt.date = dt.date(2025, 12, 31)
    partitions: int | None = None
    dirt: DirtRates = Field(default_factory=DirtRates)
    movers: float = Field(
        0.0, ge=0, le=1, description="share of lapsed customers who come back with a burst of big orders after end_date"
    )
    mover_days: int = Field(7, ge=1, description="the burst falls in the days after end_date, up to this many")
    day_share: float = Field(
        0.01,
        gt=0,
        le=0.5,
        description="datagen --next-day: the rows of the added day, as a share of the generated rows of each source",
    )


class SourcesConfig(_Strict):
    mapping: str = "synthetic"
    root: str = "./data/synthetic"
    base_currency: str = "EUR"
    currency_rates: dict[str, float] = Field(default_factory=lambda: {"EUR": 1.0})
    country_aliases: dict[str, str | None] = Field(default_factory=dict)
    default_phone_region: str = "GB"
    earliest_event: dt.date = Field(
        dt.date(1990, 1, 1), description="event times before this date are quarantined as implausible_timestamp"
    )


class QualityRule(_Strict):
    name: str
    expectation: Literal["not_null", "unique", "between", "in_set", "regex"]
    column: str
    severity: Literal["warn", "quarantine", "critical"] = Field(
        "warn", description="warn: reported; quarantine: failing rows move to quarantine; critical: the run stops"
    )
    min: float | None = None
    max: float | None = None
    values: list[Any] | None = None
    pattern: str | None = None
    mostly: float = Field(1.0, ge=0, le=1)
    where: str | None = Field(None, description="Spark SQL condition: the rule checks only these rows")
    reason: str | None = None


class QualityConfig(_Strict):
    rules_dir: str = "quality"
    max_rejected_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="a batch whose share of rows quarantined by clean passes this stops the run (critical); "
        "a source's mapping may set its own",
    )


class LifecycleConfig(_Strict):
    engaged_days: int = Field(90, ge=1)
    new_days: int = Field(90, ge=1)
    at_risk_days: int = Field(90, ge=1)
    churned_days: int = Field(180, ge=1)
    reactivated_days: int = Field(90, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleConfig:
        if not self.at_risk_days < self.churned_days:
            raise ValueError(
                f"features.lifecycle: at_risk_days ({self.at_risk_days}) must be less than churned_days "
                f"({self.churned_days})"
            )
        return self


class FeaturesConfig(_Strict):
    catalog: str = "features/catalog.yaml"
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    cart_conversion_hours: int = Field(24, ge=1)
    purchase_events: list[str] = Field(default_factory=lambda: ["purchase"])


class LayerConfig(_Strict):
    features: list[str] = Field(min_length=1, description="catalog features the layer clusters on")
    algorithms: list[str] = Field(
        default_factory=lambda: ["kmeans"],
        min_length=1,
        description="algorithms to sweep, by name in microseg.segmentation.algorithms (checked when train starts)",
    )
    macros: list[str] | None = Field(None, description="macro segments the layer applies to; None: all")


class TrainConfig(_Strict):
    by_macro: bool = Field(True, description="one model per layer and macro segment; False: one per layer ('all')")
    layers: dict[str, LayerConfig | None] = Field(description="a layer set to null is switched off")
    k_min: int = Field(2, ge=2)
    k_max: int = Field(6, ge=2)
    min_macro_size: int = Field(500, ge=2, description="a smaller macro segment gets one segment, not a clustering")
    sweep_sample: int = Field(5000, ge=100, description="rows per macro segment the sweep fits on")
    fit_sample: int | None = Field(None, ge=100, description="rows for the final fit; None: all rows")
    silhouette_sample: int = Field(5000, ge=100)
    stability_fraction: float = Field(0.8, gt=0, le=1, description="share of the sweep sample of the second fit")
    min_smallest_share: float = Field(0.02, ge=0, lt=1)
    min_stability: float = Field(0.7, ge=-1, le=1)
    promotion_tolerance: float = Field(0.0, ge=0, description="the champion moves if silhouette >= its own - this")
    refit_tolerance: float = Field(
        0.1,
        ge=0,
        description="a refit on all rows must keep the sweep's silhouette within this, or the next one is tried",
    )
    min_refit_agreement: float = Field(
        0.9,
        ge=-1,
        le=1,
        description="adjusted Rand index the refit's labels of the sweep sample must reach against the candidate's",
    )
    max_refits: int = Field(3, ge=1, description="candidates refitted at most, in the order of the selection rule")
    force_promote: bool = Field(False, description="make the new models champions whatever their metrics")
    gmm_pca_variance: float | None = Field(0.95, gt=0, le=1, description="None: GaussianMixture without PCA")
    max_iter: int = Field(40, ge=1)
    seed: int = 42
    register_model: bool = True

    @property
    def active_layers(self) -> dict[str, LayerConfig]:
        return {name: layer for name, layer in self.layers.items() if layer is not None}

    @model_validator(mode="after")
    def _k_range(self) -> TrainConfig:
        if not self.active_layers:
            raise ValueError("train.layers has no layer switched on")
        if self.k_max < self.k_min:
            raise ValueError(f"train.k_max ({self.k_max}) is less than train.k_min ({self.k_min})")
        return self


class AssignConfig(_Strict):
    membership_threshold: float = Field(
        0.2, gt=0, le=1, description="GaussianMixture: every segment with at least this probability is a membership"
    )


class ProfileConfig(_Strict):
    k_anonymity: int = Field(50, ge=1, description="a smaller segment shows its size only")
    top_features: int = Field(3, ge=1, description="features named in a segment's label")
    label_min_z: float = Field(0.5, ge=0, description="a feature enters the label only with |z| at least this")
    report_sample: int = Field(3000, ge=100, description="customers per layer in the report's 2-D projection")


class ChurnConfig(_Strict):
    enabled: bool = Field(True, description="train and score the churn classifier (microseg-churn)")
    horizon_days: int = Field(
        90, ge=7, description="a customer churns when they make no purchase within this many days after the cut-off"
    )
    max_iter: int = Field(20, ge=1, description="GBTClassifier boosting rounds")
    max_depth: int = Field(4, ge=1, le=30, description="GBTClassifier tree depth")
    baseline_max_iter: int = Field(50, ge=1, description="LogisticRegression (the baseline) iterations")
    min_rows: int = Field(100, ge=10, description="fewer labelled customers per window: no churn model, with why")
    promotion_tolerance: float = Field(0.0, ge=0, description="the champion moves if AUC >= its own today - this")
    seed: int = 42


class ValueConfig(_Strict):
    unit_days: float = Field(7.0, gt=0, description="the BG/NBD time unit, in days (7: weeks)")
    clv_months: int = Field(12, ge=1, description="the CLV horizon, in months of 30 days")
    monthly_discount: float = Field(0.01, ge=0, lt=1, description="the CLV's monthly discount rate")
    holdout_days: int = Field(90, ge=7, description="the CLV calibration plot's holdout window, before as_of")
    register_model: bool = True
    churn: ChurnConfig = Field(default_factory=ChurnConfig)


class RunConfig(_Strict):
    as_of: dt.date | None = Field(None, description="the snapshot date; None: yesterday in UTC, the last complete day")
    stages: list[str] = Field(
        default_factory=list, description="the stages a run takes, by name; empty: every stage, in order"
    )
    lock_lease_seconds: int = Field(
        3600,
        ge=1,
        description="a run holds its as_of in ops.run_locks on a lease this long, renewed at a stage's start when "
        "less than half is left (keep it twice the longest stage); a dead run's lock is taken over once it "
        "expires (at once on the same host)",
    )
    parallel_sources: int = Field(
        4,
        ge=1,
        description="sources ingested, cleaned and published at once, each in a thread of its own Spark jobs (a "
        "small daily batch costs the driver's planning of each table's jobs, which the others' jobs overlap); 1: "
        "one after another",
    )


class TablesConfig(_Strict):
    """How the tables are named in a catalog: ``[<catalog>.]<schema_prefix>_<layer>.<table>``, and which metastore.

    ``metastore``: ``embedded``, Spark's Hive metastore in Derby under ``metastore_dir`` (one process at a
    time); ``hive``, a Hive metastore whose connection ``spark.settings`` give (PostgreSQL: README);
    ``session``, the catalog the Spark session already has (Unity Catalog, Glue on a cluster);
    ``none``, tables by path only.
    """

    catalog: str | None = Field(None, description="a catalog (Unity Catalog, Glue) for three-level names")
    schema_prefix: str = Field("microseg", pattern=r"^[a-z][a-z0-9_]*$", description="schemas <prefix>_<layer>")
    metastore: Literal["embedded", "hive", "session", "none"] = "embedded"
    metastore_dir: str | None = Field(None, description="embedded: Derby's folder; None: <lake.root>/_metastore")


class Config(_Strict):
    env: str = "local"
    conf_dir: str = Field("", description="set by the loader: the folder of the config files")
    spark: SparkConfig = Field(default_factory=SparkConfig)
    lake: LakeConfig = Field(default_factory=LakeConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    datagen: DatagenConfig = Field(default_factory=DatagenConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig
    assign: AssignConfig = Field(default_factory=AssignConfig)
    tables: TablesConfig = Field(default_factory=TablesConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    value: ValueConfig = Field(default_factory=ValueConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def path(self, relative: str) -> str:
        """A path from config made absolute: URIs stay as they are, relative paths join the cwd."""
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", relative):
            return relative
        return str(Path(relative).expanduser().resolve())

    @property
    def lake_root(self) -> str:
        return self.path(self.lake.root)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.lake_root}/mlflow.db"

    @property
    def artifact_location(self) -> str | None:
        """Where a new experiment keeps its artifacts: ``mlflow.artifact_location``; else, with tracking on a
        server, the server's choice (None); else ``<lake>/mlflow-artifacts`` (``s3a://`` written as MLflow's
        ``s3://``, the only name MLflow's artifact stores know for S3)."""
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        if re.match(r"^(https?|databricks)\b", self.tracking_uri):
            return None
        location = f"{self.lake_root}/mlflow-artifacts"
        return "s3://" + location.removeprefix("s3a://") if location.startswith("s3a://") else location

    @property
    def metastore_dir(self) -> str:
        """Where the embedded metastore keeps its Derby database and warehouse folder."""
        return self.path(self.tables.metastore_dir) if self.tables.metastore_dir else f"{self.lake_root}/_metastore"

    def conf_file(self, *parts: str) -> Path:
        return Path(self.conf_dir, *parts)
