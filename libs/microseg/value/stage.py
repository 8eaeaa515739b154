"""Value stage: what each customer of the snapshot is worth and how likely they are to leave (gold.customer_value).

- **CLV.** BG/NBD and Gamma-Gamma are fitted on the sufficient statistics of the snapshot's customers (those of
  gold.customer_features at as_of: eligible, with profiling consent) from silver.orders, one MLflow run per as_of
  holding the parameters, their standard errors, the log-likelihoods, the number of distinct tuples and a holdout
  plot (the model refitted on the data before the last ``holdout_days`` predicts them). The model is registered
  as microseg-clv; a converged fit becomes champion (the old champion previous). A fit that did not converge
  stays a candidate and the champion's parameters score the customers (fail closed).
- **Churn** (``microseg.value.propensity``): a GBT classifier with a logistic-regression baseline on a time
  split, registered as microseg-churn, scored on the snapshot's features.

Customers without a purchase up to as_of have null values (the models describe buyers). Skipped when nothing it
reads changed since its last successful run of the as_of and its rows are still as written (``--retrain``
forces the fits).
"""

from __future__ import annotations

import datetime as dt
import logging

import mlflow
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.features.catalog import Catalog, load_catalog
from microseg.features.stage import Inputs
from microseg.runtime import lake, provenance, tables
from microseg.runtime.config import Config
from microseg.runtime.runlog import Entry, RunContext, StageReport, unchanged_since
from microseg.runtime.sparkops import cached, described
from microseg.segmentation import registry
from microseg.value import artifacts, clv, predict, propensity, stats

log = logging.getLogger(__name__)

TABLE = lake.CUSTOMER_VALUE
COLUMNS = [name for name, _ in TABLE.columns]


def snapshot(spark: SparkSession, cfg: Config, as_of: dt.date) -> DataFrame:
    return tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(as_of))


def inputs_fingerprint(spark: SparkSession, cfg: Config, catalog: Catalog, as_of: dt.date) -> dict:
    """What the stage reads: the silver tables' latest commits (orders for CLV, all of them for the churn
    features), the snapshot's feature rows, the config it reads and the code."""
    silver = {name: provenance.table_state(spark, cfg, lake.silver(name)) for name in Inputs.__dataclass_fields__}
    return {
        "silver": silver,
        "features": provenance.rows_fingerprint(snapshot(spark, cfg, as_of)),
        "config": provenance.digest({"value": cfg.value, "features": cfg.features, "catalog": catalog}),
        "code": provenance.code_version(),
    }


def outputs_fingerprint(spark: SparkSession, cfg: Config, as_of: dt.date) -> dict:
    if not tables.exists(spark, cfg, TABLE):
        return {TABLE.name: None}
    rows = tables.read(spark, cfg, TABLE).where(F.col("as_of") == F.lit(as_of))
    return {TABLE.name: provenance.rows_fingerprint(rows)}


def run_value(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """Write gold.customer_value for run.as_of (replacing that snapshot only); see the module docstring."""
    catalog = load_catalog(cfg)
    with described(spark, "value: input fingerprint"):
        inputs = inputs_fingerprint(spark, cfg, catalog, run.as_of)
        last = None
        if not run.retrain:
            last = unchanged_since(
                spark, cfg, run.as_of, ("value", TABLE.name), inputs,
                lambda _: outputs_fingerprint(spark, cfg, run.as_of),
            )  # fmt: skip
    if last is not None:
        return skipped_value(run, *last)
    report = compute_value(spark, cfg, run, catalog)
    with described(spark, "value: output fingerprint"):
        outputs = outputs_fingerprint(spark, cfg, run.as_of)
    report.entries[0].details["fingerprint"] = {"inputs": inputs, "outputs": outputs}
    return report


def skipped_value(run: RunContext, last_run: str, details: dict) -> StageReport:
    computed_by = details.get("computed_by_run", last_run)
    inputs = details["fingerprint"]["inputs"]
    line = (
        f"value: skipped, as_of {run.as_of} unchanged since run {computed_by}: the same silver tables, feature "
        f"snapshot, config {inputs['config'][:8]} and code {inputs['code'][:8]}, and its rows in {TABLE} as that "
        "run wrote them (--retrain refits)"
    )
    log.info(line)
    kept = {k: details.get(k) for k in ("models", "clv", "churn")}
    entry = Entry(
        TABLE.name, rows_in=0, rows_written=0, rows_quarantined=0,
        details={**kept, "skipped": line, "computed_by_run": computed_by, "fingerprint": details["fingerprint"]},
    )  # fmt: skip
    return StageReport("value", [entry], info={"skipped": line, **kept})


def fit_clv(purchases: DataFrame) -> tuple[stats.Tuples, clv.BgNbdFit | None, clv.GammaGammaFit | None, str | None]:
    """The distinct tuples of ``purchases`` (``stats.purchase_statistics``), and both fits: BG/NBD on the tuples,
    Gamma-Gamma on the (x, m) pairs; or None and why the data cannot support them."""
    tuples = stats.tuple_counts(purchases)
    pairs = stats.spend_pairs(purchases)
    if not len(tuples.weight):
        return tuples, None, None, "no customer of the snapshot has a purchase up to as_of in silver.orders"
    if not len(pairs.weight):
        return tuples, None, None, "no customer of the snapshot has a repeat purchase of positive value"
    return tuples, clv.fit_bg_nbd(*tuples), clv.fit_gamma_gamma(*pairs), None


def _fit_metrics(name: str, fit: clv.Fit) -> dict[str, float]:
    metrics = {f"{name}_{k}": v for k, v in fit.params.items()}
    metrics |= {f"{name}_{k}_se": v for k, v in fit.std_errors.items() if v == v}  # NaN: Hessian not invertible
    return metrics | {
        f"{name}_log_likelihood": fit.log_likelihood,
        f"{name}_distinct_tuples": fit.n_tuples,
        f"{name}_customers": fit.n_customers,
    }


def compute_value(spark: SparkSession, cfg: Config, run: RunContext, catalog: Catalog) -> StageReport:
    """The stage's work (``run_value``)."""
    value, as_of = cfg.value, run.as_of
    registry.configure(cfg)
    featured = snapshot(spark, cfg, as_of)
    orders = tables.read(spark, cfg, lake.ORDERS).join(featured.select("customer_id"), "customer_id", "left_semi")
    purchases = stats.purchase_statistics(orders, as_of, value.unit_days)
    tags = {
        "kind": "value",
        "as_of": str(as_of),
        "pipeline_run_id": run.run_id,
        "git_commit": provenance.git_commit(),
        "config_hash": provenance.config_hash(cfg),
        **provenance.input_versions(spark, cfg, [lake.ORDERS, lake.CUSTOMER_FEATURES]),
    }
    with cached(purchases) as purchases:
        with described(spark, "value: CLV sufficient statistics"):
            tuples, bg_nbd, gamma_gamma, unfit = fit_clv(purchases)
        holdout = []
        if unfit is None:
            with described(spark, "value: CLV holdout window"):
                holdout = predict.holdout_check(
                    stats.holdout_tuples(orders, as_of, value.holdout_days, value.unit_days),
                    value.holdout_days,
                    value.unit_days,
                )
        churn = propensity.train(spark, cfg, catalog, featured, as_of)
        fitted = None if unfit else {"bg_nbd": bg_nbd.params, "gamma_gamma": gamma_gamma.params}
        with mlflow.start_run(run_name=f"value-{as_of}", tags=tags) as mlflow_run:
            mlflow.log_params(artifacts.value_settings(value))
            if unfit is None:
                mlflow.log_metrics(_fit_metrics("bg_nbd", bg_nbd) | _fit_metrics("gamma_gamma", gamma_gamma))
                mlflow.log_dict(fitted, "clv_params.json")
                mlflow.log_dict({"rows": holdout}, "clv_holdout.json")
                if holdout:
                    artifacts.log_figure(artifacts.holdout_figure(holdout, value.holdout_days), "clv_holdout.png")
                clv_model = _promote_clv(cfg, bg_nbd, gamma_gamma, tags)
            else:
                log.warning("value: no CLV fit: %s", unfit)
                mlflow.set_tag("clv", unfit)
                clv_model = {"version": None, "champion": None, "decision": f"no fit: {unfit}"}
            churn_model = propensity.log_and_promote(cfg, churn, tags)
        live = _live_clv(cfg, clv_model, fitted)
        scored = _customer_rows(spark, cfg, featured, purchases, tuples, live, churn, churn_model, as_of)
        with described(spark, f"value: {TABLE}"):
            written = tables.replace_where(scored, cfg, TABLE, f"as_of = '{as_of}'").rows_written
    models = {"clv": clv_model, "churn": churn_model}
    details = {
        "mlflow_run_id": mlflow_run.info.run_id,
        "models": models,
        "clv": {**(fitted or {"reason": unfit}), "holdout": holdout, "distinct_tuples": len(tuples.weight),
                "converged": unfit is None and bg_nbd.converged and gamma_gamma.converged},
        "churn": churn.summary(),
    }  # fmt: skip
    entry = Entry(TABLE.name, rows_in=written, rows_written=written, rows_quarantined=0, details=details)
    return StageReport("value", [entry], info=details)


def _promote_clv(cfg: Config, bg_nbd: clv.BgNbdFit, gamma_gamma: clv.GammaGammaFit, tags: dict) -> dict:
    """Log the CLV model and register it; a converged fit (with q > 1, so order values are finite) is promoted."""
    uri = artifacts.log_clv_model(cfg, bg_nbd.params, gamma_gamma.params)
    problems = [
        f"{f.__class__.__name__} did not converge ({f.message})" for f in (bg_nbd, gamma_gamma) if not f.converged
    ]
    if gamma_gamma.params["q"] <= 1:
        problems.append(f"Gamma-Gamma q = {gamma_gamma.params['q']:.3f} <= 1: expected order values are infinite")
    why = "; ".join(problems) or "the fits converged"
    return artifacts.promote(cfg, artifacts.CLV_MODEL, uri, not problems, why, {"as_of": tags["as_of"]})


def _live_clv(cfg: Config, decision: dict, fitted: dict | None) -> dict | None:
    """The parameters that score today: this run's when its model is champion, else the champion's (None: none)."""
    if fitted is not None and decision["champion"] is not None and decision["champion"] == decision["version"]:
        return {"version": decision["version"], **fitted}
    if fitted is not None and not cfg.value.register_model:
        return {"version": None, **fitted}
    found = artifacts.champion_clv_params(cfg)
    if found is None:
        log.warning("value: no CLV champion to score with; the CLV columns of as_of are null")
        return None
    version, bg_nbd, gamma_gamma = found
    return {"version": version, "bg_nbd": bg_nbd, "gamma_gamma": gamma_gamma}


def _customer_rows(
    spark: SparkSession,
    cfg: Config,
    featured: DataFrame,
    purchases: DataFrame,
    tuples: stats.Tuples,
    live: dict | None,
    churn: propensity.ChurnRun,
    churn_model: dict,
    as_of: dt.date,
) -> DataFrame:
    """One row per customer of the snapshot with the live CLV model's values and the churn champion's scores."""
    rows = featured.select("customer_id")
    if live is not None:
        predictions = predict.tuple_predictions(spark, tuples, live["bg_nbd"], cfg.value)
        rows = rows.join(predict.customer_values(purchases, predictions, live["gamma_gamma"]), "customer_id", "left")
    scores = propensity.scores(churn, churn_model, featured, purchases)
    if scores is not None:
        rows = rows.join(scores, "customer_id", "left")
    missing = {
        "as_of": F.lit(as_of).cast("date"),
        "clv_model_version": F.lit(live["version"] if live else None).cast("string"),
        "churn_model_version": F.lit(churn_model.get("champion") if scores is not None else None).cast("string"),
    }
    columns = [missing.get(c, F.col(c)) if c in rows.columns or c in missing else F.lit(None) for c in COLUMNS]
    typed = dict(TABLE.columns)
    return rows.select(*[col.cast(typed[c]).alias(c) for col, c in zip(columns, COLUMNS, strict=True)])


def summary_lines(info: dict) -> list[str]:
    """The run summary's lines on the value models: parameters, the holdout check, churn metrics, decisions."""
    fits, models, churn = info["clv"], info["models"], info["churn"]
    lines = [f"value: MLflow run {info['mlflow_run_id']}"]
    if fits.get("bg_nbd"):
        bg = ", ".join(f"{k} {v:.4g}" for k, v in fits["bg_nbd"].items())
        gg = ", ".join(f"{k} {v:.4g}" for k, v in fits["gamma_gamma"].items())
        lines.append(f"  CLV: BG/NBD {bg}; Gamma-Gamma {gg}; {fits['distinct_tuples']:,} distinct (x, t_x, T)")
    lines.append(f"  microseg-clv v{models['clv']['version']}: {models['clv']['decision']}")
    if churn.get("reason"):
        lines.append(f"  churn: {churn['reason']}")
        return lines
    for name, m in churn["evaluation"].items():
        lines.append(
            f"  churn {name}: AUC {m['auc']:.3f}, log-loss {m['log_loss']:.3f}, lift in the top decile "
            f"{m['lift_top_decile']:.2f} ({m['rows']:,} customers, cut-off {churn['windows']['test_cutoff']})"
        )
    lines.append(f"  microseg-churn v{models['churn']['version']} ({churn['chosen']}): {models['churn']['decision']}")
    return lines
