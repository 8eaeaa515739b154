"""The segment report: one self-contained HTML file per run for marketing analysts, also logged to MLflow.

Plots are matplotlib figures embedded as PNG (base64), so the file opens anywhere without network
access. It holds no customer identifiers at all: only segment-level figures, and a 2-D projection
of a sample drawn as unlabelled points.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from microseg.features.catalog import Catalog
from microseg.outputs.value_report import value_section
from microseg.runtime import lake, plots, storage, tables
from microseg.runtime.config import Config
from microseg.runtime.runlog import RunContext
from microseg.segmentation import registry
from microseg.segmentation.artifacts import log_report
from microseg.segmentation.pipeline import ALL

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1200px; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; } th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5rem 0; }
.note { color: #666; font-size: 0.85rem; }
"""


def _png(fig: object) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plots.pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def sizes_plot(profiles: list[dict], title: str) -> str:
    plt = plots.pyplot()
    rows = sorted(profiles, key=lambda p: p["segment_id"])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1))
    ax.barh([f"{p['segment_id']}  {p['label'] or ''}"[:70] for p in rows], [p["size"] for p in rows], color="#4a7bb7")
    ax.invert_yaxis()
    ax.set_xlabel("customers")
    ax.set_title(f"{title}: segment sizes")
    return _png(fig)


def text_color(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (its relative luminance, WCAG)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgba[:3])
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.179 else "black"


def heatmap_features(profiles: list[dict], features: list[str], prefix: str = "z_in_macro_") -> list[str]:
    """The features to show: those with a z-score for at least one segment (a feature null or constant for
    everyone has none, and is not drawn as 0.0)."""
    return [f for f in features if any(p.get(f"{prefix}{f}") is not None for p in profiles)]


def heatmap_plot(profiles: list[dict], features: list[str], title: str, prefix: str = "z_in_macro_") -> str | None:
    """Per segment, each feature's z-score (within the macro segment by default); a missing one is left blank."""
    features = heatmap_features(profiles, features, prefix)
    rows = [p for p in sorted(profiles, key=lambda p: p["segment_id"]) if p.get("label") is not None]
    if not rows or not features:
        return None
    plt = plots.pyplot()
    matrix = np.array(
        [[np.nan if p.get(f"{prefix}{f}") is None else p[f"{prefix}{f}"] for f in features] for p in rows]
    )
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(features), 0.4 * len(rows) + 1.5))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(np.clip(matrix, -3, 3)), cmap=cmap, vmin=-3, vmax=3, aspect="auto")
    ax.set_xticks(range(len(features)), features, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [p["segment_id"] for p in rows])
    for (i, j), value in np.ndenumerate(matrix):
        if np.isnan(value):
            continue
        color = text_color(image.cmap(image.norm(np.clip(value, -3, 3))))
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=color)
    what = "within the macro segment" if prefix == "z_in_macro_" else "against all customers"
    fig.colorbar(image, ax=ax, label=f"z-score {what} (clipped at ±3)")
    ax.set_title(f"{title}: feature z-scores per segment")
    return _png(fig)


def projection_plot(points: np.ndarray, segments: list[str], title: str) -> str | None:
    """Principal-component projection of standardised features of a sample, coloured by segment."""
    if len(points) < 3 or points.ndim != 2 or points.shape[1] == 0:
        return None
    plt = plots.pyplot()
    centred = (points - points.mean(axis=0)) / np.where(points.std(axis=0) > 0, points.std(axis=0), 1.0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for name in sorted(set(segments)):
        mask = np.array([s == name for s in segments])
        ax.scatter(xy[mask, 0], xy[mask, 1] if xy.shape[1] > 1 else np.zeros(mask.sum()), s=6, alpha=0.6, label=name)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title(f"{title}: 2-D projection of a sample, coloured by segment")
    return _png(fig)


def migration_plot(cells: list[dict], layer: str) -> str | None:
    if not cells:
        return None
    plt = plots.pyplot()
    sources = sorted({c["from_segment"] for c in cells})
    targets = sorted({c["to_segment"] for c in cells})
    matrix = np.zeros((len(sources), len(targets)))
    for c in cells:
        matrix[sources.index(c["from_segment"]), targets.index(c["to_segment"])] = c["customers"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(targets), 1 + 0.45 * len(sources)))
    ax.imshow(matrix, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
    ax.set_yticks(range(len(sources)), sources)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("to (this snapshot)")
    ax.set_ylabel("from (previous snapshot)")
    ax.set_title(f"{layer}: migrations")
    return _png(fig)


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_text(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _text(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _run_artifacts(cfg: Config, run_id: str) -> tuple[str | None, dict]:
    """A model's training run: its k-selection curves (PNG, base64; none for a single segment) and its
    feature screening (``feature_screening.json``: the features used, those dropped and why, why k=1)."""
    client = registry.client(cfg)
    try:
        curves = base64.b64encode(Path(client.download_artifacts(run_id, "k_selection.png")).read_bytes()).decode()
    except Exception:  # single-segment models have no curves
        curves = None
    return curves, registry.load_run_json(run_id, "feature_screening.json") or {}


def macro_section(
    cfg: Config, layer: str, macro: str, rows: list[dict], spec_features: list[str], sample: list[dict], runs: list[str]
) -> list[str]:
    """One (layer, macro segment) of the report: sizes, profiles, heatmap, projection, k selection, screening.

    ``sample``: rows of the layer's report sample (segment_id, macro_segment and the layer's features);
    ``runs``: the training runs of the models that assigned the macro segment's customers.
    """
    title = f"{layer} / {macro}"
    parts = [f"<h3>{html.escape(title)}</h3>"]
    screening: dict = {}
    curves: list[str] = []
    for run_id in sorted(set(runs)):
        image, found = _run_artifacts(cfg, run_id)
        screening = screening or found
        if image:
            curves.append(image)
    if screening.get("single_segment_reason"):
        parts.append(f'<p class="note">k=1: {html.escape(screening["single_segment_reason"])}</p>')
    dropped = screening.get("dropped") or {}
    if dropped:
        listed = "; ".join(f"{f}: {why}" for f, why in dropped.items())
        parts.append(f'<p class="note">Features left out of the model: {html.escape(listed)}</p>')
    features = screening.get("features", spec_features)
    parts.append(_img(sizes_plot(rows, title), f"{layer} {macro} segment sizes"))
    columns = ["segment_id", "label", "size", "share", "share_of_macro", "top_features", "mean_clv", "value_at_risk"]
    parts.append(_table(rows, columns))
    heatmap = heatmap_plot(rows, features, title)
    if heatmap:
        parts.append(_img(heatmap, f"{layer} {macro} z-score heatmap"))
    shown = heatmap_features(rows, features)
    points = [r for r in sample if str(r["macro_segment"]) == macro]
    projection = projection_plot(
        np.array([[r[f] for f in shown] for r in points], dtype=float).reshape(len(points), len(shown)),
        [r["segment_id"] for r in points],
        title,
    )
    if projection:
        parts.append(_img(projection, f"{layer} {macro} projection"))
    for image in curves:
        parts.append(_img(image, f"{layer} {macro} k selection"))
    return parts


def build_report(spark: SparkSession, cfg: Config, run: RunContext, catalog: Catalog) -> str:
    """The report's HTML for run.as_of, from the gold tables and the champions' MLflow artifacts."""
    on_date = F.col("as_of") == F.lit(run.as_of)
    profiles = [r.asDict() for r in tables.read(spark, cfg, lake.SEGMENT_PROFILES).where(on_date).collect()]
    migrations = []
    if tables.exists(spark, cfg, lake.SEGMENT_MIGRATIONS):
        migrations = [r.asDict() for r in tables.read(spark, cfg, lake.SEGMENT_MIGRATIONS).where(on_date).collect()]
    assignments = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(on_date)
    features = tables.read(spark, cfg, lake.CUSTOMER_FEATURES).where(on_date)
    parts = [
        f"<h1>Customer segments as of {run.as_of}</h1>",
        f'<p class="note">microseg run {html.escape(run.run_id)}; feature catalog version {catalog.version}. '
        f"Segments smaller than {cfg.profile.k_anonymity} customers show their size only. No customer identifiers "
        "appear in this report.</p>",
    ]
    for layer, spec in cfg.train.active_layers.items():
        rows = [p for p in profiles if p["layer"] == layer]
        if not rows:
            continue
        parts.append(f"<h2>Layer: {html.escape(layer)}</h2>")
        fraction = min(1.0, cfg.profile.report_sample / max(1, sum(p["size"] for p in rows)))
        layer_assignments = assignments.where(F.col("layer") == layer)
        sample = [
            r.asDict()
            for r in layer_assignments.sample(fraction=fraction, seed=7)
            .join(features.drop("macro_segment"), "customer_id")
            .select(
                "segment_id",
                "macro_segment",
                *[F.coalesce(F.col(f).cast("double"), F.lit(0.0)).alias(f) for f in spec.features],
            )
            .collect()
        ]
        # Models that span the macro segments (train.by_macro: false) have the one section ALL.
        section_of = (lambda macro: str(macro)) if cfg.train.by_macro else (lambda _: ALL)
        for r in sample:
            r["macro_segment"] = section_of(r["macro_segment"])
        runs: dict[str, list[str]] = {}
        for a in layer_assignments.select("macro_segment", "training_run_id").distinct().collect():
            runs.setdefault(section_of(a["macro_segment"]), []).append(a["training_run_id"])
        for macro in sorted({str(p["macro_segment"]) for p in rows}):
            in_macro = [p for p in rows if str(p["macro_segment"]) == macro]
            parts += macro_section(cfg, layer, macro, in_macro, spec.features, sample, runs.get(macro, []))
        cells = [m for m in migrations if m["layer"] == layer]
        if cells:
            parts.append(f"<h3>{html.escape(layer)}: migrations since {cells[0]['previous_as_of']}</h3>")
            parts.append(_img(migration_plot(cells, layer), f"{layer} migrations"))
        else:
            parts.append('<p class="note">No previous snapshot: no migrations yet.</p>')
    parts += value_section(spark, cfg, run.as_of, profiles, assignments, _png, _img)
    macro_cells = [m for m in migrations if m["layer"] == "macro_segment"]
    if macro_cells:
        parts.append("<h2>Lifecycle macro segments</h2>")
        parts.append(_img(migration_plot(macro_cells, "macro segments"), "macro segment migrations"))
    head = f"<meta charset='utf-8'><title>microseg segments {run.as_of}</title><style>{STYLE}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>"


def write_report(spark: SparkSession, cfg: Config, run: RunContext, catalog: Catalog) -> str:
    """Write the report under <lake>/reports/ and log it to MLflow; return its path."""
    text = build_report(spark, cfg, run, catalog)
    name = f"segment_report_{run.as_of}_{run.run_id}.html"
    uri = storage.write_text(cfg, storage.join(cfg.lake_root, "reports", name), text)
    registry.configure(cfg)
    with tempfile.TemporaryDirectory(prefix="microseg-report-") as local:
        Path(local, name).write_text(text, encoding="utf-8")
        tags = {"as_of": str(run.as_of), "pipeline_run_id": run.run_id}
        registry.retried(log_report)(str(Path(local, name)), f"report-{run.as_of}", tags)
    return uri
