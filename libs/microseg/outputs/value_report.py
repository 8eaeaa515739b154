"""The report's value section: value at risk and the CLV distribution per segment, and the value models' checks
(the CLV holdout plot and the churn classifiers' calibration), from gold.segment_profiles, gold.customer_value and
the value stage's facts in ops.run_log."""

from __future__ import annotations

import html
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import lake, plots, tables
from microseg.runtime.config import Config
from microseg.runtime.runlog import last_ok_entry
from microseg.value import artifacts, churn, propensity

Png = Callable[[object], str]  # a matplotlib figure -> base64 PNG (closed)
Img = Callable[[str, str], str]  # (base64 PNG, alt text) -> <img> HTML


def _segment_name(p: dict) -> str:
    return f"{p['segment_id']}  {p['label'] or ''}"[:60]


def value_at_risk_plot(rows: list[dict], layer: str, png: Png) -> str | None:
    """Horizontal bars of each visible segment's value at risk (sum of CLV x churn probability)."""
    rows = sorted((p for p in rows if p.get("value_at_risk") is not None), key=lambda p: -p["value_at_risk"])
    if not rows:
        return None
    fig, ax = plots.pyplot().subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    ax.barh([_segment_name(p) for p in rows], [p["value_at_risk"] for p in rows], color="#c44e52")
    ax.invert_yaxis()
    ax.set_xlabel("value at risk: sum of CLV x churn probability")
    ax.set_title(f"{layer}: value at risk per segment")
    return png(fig)


def clv_distribution_plot(sample: list[dict], rows: list[dict], layer: str, png: Png) -> str | None:
    """Box plots of the CLV of a sample of each visible segment's customers."""
    names = {p["segment_id"]: _segment_name(p) for p in rows if p.get("label") is not None}
    groups = {s: [r["clv"] for r in sample if r["segment_id"] == s and r["clv"] is not None] for s in sorted(names)}
    groups = {s: v for s, v in groups.items() if v}
    if not groups:
        return None
    fig, ax = plots.pyplot().subplots(figsize=(8, 0.32 * len(groups) + 1.2))
    ax.boxplot(list(groups.values()), vert=False, showfliers=False)
    ax.set_yticks(range(1, len(groups) + 1), [names[s] for s in groups])
    ax.invert_yaxis()
    ax.set_xlabel("CLV (base currency; whiskers 1.5 IQR, outliers hidden)")
    ax.set_title(f"{layer}: CLV distribution per segment (sample)")
    return png(fig)


def model_checks(spark: SparkSession, cfg: Config, as_of: object, png: Png) -> list[tuple[str, str]]:
    """(caption, PNG) of the value models' checks for as_of, from the value stage's last successful run."""
    found = last_ok_entry(spark, cfg, as_of, "value", lake.CUSTOMER_VALUE.name)
    if found is None:
        return []
    details, plots = found[1], []
    holdout = (details.get("clv") or {}).get("holdout") or []
    if holdout:
        plots.append(("CLV holdout check", png(artifacts.holdout_figure(holdout, cfg.value.holdout_days))))
    metrics = (details.get("churn") or {}).get("evaluation") or {}
    if metrics:
        rebuilt = {name: propensity.metrics_from_dict(m) for name, m in metrics.items()}
        plots.append(("churn calibration", png(churn.calibration_figure(rebuilt))))
    return plots


def value_section(
    spark: SparkSession, cfg: Config, as_of: object, profiles: list[dict], assignments: DataFrame, png: Png, img: Img
) -> list[str]:
    """The report's "Customer value" section; empty when the snapshot has no customer values."""
    if not tables.exists(spark, cfg, lake.CUSTOMER_VALUE):
        return []
    value = tables.read(spark, cfg, lake.CUSTOMER_VALUE).where(F.col("as_of") == F.lit(as_of))
    parts = [
        "<h2>Customer value</h2>",
        '<p class="note">CLV: BG/NBD and Gamma-Gamma over the next '
        f"{cfg.value.clv_months} months, discounted {cfg.value.monthly_discount:.1%} a month (microseg-clv). "
        f"Churn probability: no purchase within {cfg.value.churn.horizon_days} days (microseg-churn). "
        "Value at risk: the sum over a segment's customers of CLV x churn probability.</p>",
    ]
    for caption, plot in model_checks(spark, cfg, as_of, png):
        parts.append(img(plot, caption))
    for layer in cfg.train.active_layers:
        rows = [p for p in profiles if p["layer"] == layer]
        if not rows:
            continue
        parts.append(f"<h3>{html.escape(layer)}: value per segment</h3>")
        at_risk = value_at_risk_plot(rows, layer, png)
        if at_risk:
            parts.append(img(at_risk, f"{layer} value at risk"))
        fraction = min(1.0, cfg.profile.report_sample / max(1, sum(p["size"] for p in rows)))
        sample = [
            r.asDict()
            for r in assignments.where(F.col("layer") == layer)
            .sample(fraction=fraction, seed=11)
            .join(value, "customer_id")
            .select("segment_id", "clv")
            .collect()
        ]
        spread = clv_distribution_plot(sample, rows, layer, png)
        if spread:
            parts.append(img(spread, f"{layer} CLV distribution"))
    return parts
