"""What the value stage leaves in MLflow: the CLV model (a pyfunc that scores sufficient statistics), the holdout
plot of the purchase model, and the registration of microseg-clv and microseg-churn with champion/previous."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd

from microseg.runtime import plots
from microseg.runtime.config import Config, ValueConfig
from microseg.segmentation import registry
from microseg.value import clv
from microseg.value.predict import HORIZONS_DAYS

log = logging.getLogger(__name__)

CLV_MODEL, CHURN_MODEL = "microseg-clv", "microseg-churn"


class ClvModel(mlflow.pyfunc.PythonModel):
    """BG/NBD + Gamma-Gamma as a model: input columns x, t_x, T (in units of ``unit_days`` days) and m (mean value
    of the repeat purchases); output p_alive, expected_purchases_<d>d, expected_order_value and clv."""

    def __init__(self, bg_nbd: dict[str, float], gamma_gamma: dict[str, float], value: dict) -> None:
        self.bg_nbd, self.gamma_gamma, self.value = bg_nbd, gamma_gamma, value

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        x, t_x, T = (model_input[c].to_numpy(float) for c in ("x", "t_x", "T"))
        m = model_input["m"].fillna(0.0).to_numpy(float)
        unit = self.value["unit_days"]
        out = {"p_alive": clv.p_alive(self.bg_nbd, x, t_x, T)}
        for days in HORIZONS_DAYS:
            out[f"expected_purchases_{days}d"] = clv.expected_purchases(self.bg_nbd, days / unit, x, t_x, T)
        out["expected_order_value"] = clv.expected_average_order_value(self.gamma_gamma, x, m)
        out["clv"] = clv.clv(
            self.bg_nbd, self.gamma_gamma, x, t_x, T, m, self.value["clv_months"], self.value["monthly_discount"], unit
        )
        return pd.DataFrame(out)


def log_clv_model(cfg: Config, bg_nbd: dict[str, float], gamma_gamma: dict[str, float]) -> str:
    """Log the CLV model to the active run; returns its model URI."""
    value = cfg.value.model_dump(include={"unit_days", "clv_months", "monthly_discount"})
    info = mlflow.pyfunc.log_model(
        name="clv_model",
        python_model=ClvModel(bg_nbd, gamma_gamma, value),
        pip_requirements=cfg.mlflow.pip_requirements or None,
    )
    return info.model_uri


def holdout_figure(rows: list[dict], holdout_days: int) -> object:
    """Mean predicted vs actual purchase days in the holdout window per frequency bin of the calibration period."""
    fig, ax = plots.pyplot().subplots(figsize=(6.5, 4))
    positions = np.arange(len(rows))
    ax.bar(positions - 0.2, [r["actual"] for r in rows], 0.4, label="actual", color="#4c72b0")
    ax.bar(positions + 0.2, [r["predicted"] for r in rows], 0.4, label="predicted (BG/NBD)", color="#dd8452")
    ax.set_xticks(positions, [f"{r['bin']}\n({r['customers']:,})" for r in rows])
    ax.set_xlabel("repeat purchases before the holdout window (customers)")
    ax.set_ylabel(f"purchase days in the last {holdout_days} days")
    ax.set_title("CLV calibration: predicted vs actual purchases in the holdout window")
    ax.legend()
    fig.tight_layout()
    return fig


def log_figure(fig: object, name: str) -> None:
    """A figure as a PNG artifact of the active run, then closed."""
    mlflow.log_figure(fig, name)
    plots.pyplot().close(fig)


def promote(cfg: Config, name: str, model_uri: str, better: bool, why: str, tags: dict[str, str]) -> dict:
    """Register the model as a new version of ``name``; it becomes champion (the old one previous) only when
    ``better``, ``why`` saying on what evidence (fail closed: a model that could not be judged stays a candidate).
    Returns its version, the champion's version after the decision (None: no champion) and the decision."""
    champion = registry.champion_version(cfg, name)
    kept = str(champion.version) if champion is not None else None
    if not cfg.value.register_model:
        return {"version": None, "champion": kept, "decision": "not registered"}
    version = registry.register(cfg, name, model_uri, tags)
    if better:
        registry.make_champion(cfg, name, version, champion)
        return {"version": version, "champion": version, "decision": f"promoted: {why}"}
    log.warning("%s v%s stays a candidate (champion: %s): %s", name, version, kept or "none", why)
    return {"version": version, "champion": kept, "decision": f"not promoted: {why}"}


def champion_clv_params(cfg: Config) -> tuple[str, dict, dict] | None:
    """The CLV champion's version and fitted parameters (its run's clv_params.json); None without a champion."""
    champion = registry.champion_version(cfg, CLV_MODEL)
    if champion is None:
        return None
    params = registry.load_run_json(champion.run_id, "clv_params.json")
    if params is None:
        return None
    return str(champion.version), params["bg_nbd"], params["gamma_gamma"]


def value_settings(cfg: ValueConfig) -> dict:
    """The run's params: the value section, flat."""
    return {
        "unit_days": cfg.unit_days,
        "clv_months": cfg.clv_months,
        "monthly_discount": cfg.monthly_discount,
        "holdout_days": cfg.holdout_days,
        **{f"churn_{k}": v for k, v in cfg.churn.model_dump().items()},
    }
