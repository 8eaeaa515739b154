"""Synthetic multi-source customer data, generated in parallel by Spark.

Every random draw is a hash of (seed, purpose, row key), so the output is the
same for the same seed whatever the partitioning. Customers come from planted
behavioural groups (``groups.GROUPS``); the true group and whether the customer
is a planted mover (see ``commerce._mover_burst``) go to ``_ground_truth/`` (the
pipeline never reads it). Known dirt is injected as extra or altered rows, each
dirty row carrying exactly one dirt kind, and ``_manifest.json`` counts both rows
per source and injected rows per dirt kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import storage
from microseg.runtime.config import Config, DatagenConfig
from microseg.synthetic.commerce import orders_frames
from microseg.synthetic.events import email_events_frame, support_tickets_frame, survey_frame, web_events_frame
from microseg.synthetic.people import crm_frame, customers_frame

# Every source and the format its files are written in.
FORMATS = {
    "crm_customers": "csv",
    "orders": "parquet",
    "order_items": "parquet",
    "web_events": "json",
    "email_events": "csv",
    "support_tickets": "csv",
    "survey_responses": "json",
}
SOURCES = tuple(FORMATS)


def _malformed_count(rows: int, rate: float) -> int:
    return round(rows * rate)


def _malformed_csv(spark: SparkSession, columns: list[str], count: int, tag: str = "") -> DataFrame:
    """Rows whose typed fields cannot be parsed: a reader with an explicit schema flags them as corrupt."""
    return spark.range(count).select(
        *[F.format_string(f"#garbled-{i}-{tag}%d#", F.col("id")).alias(c) for i, c in enumerate(columns)]
    )


def _malformed_json(spark: SparkSession, count: int, tag: str = "") -> DataFrame:
    return spark.range(count).select(
        F.format_string(f'{{"event_id": "BROKEN-{tag}%d", "event_ts": ', F.col("id")).alias("value")
    )


def generate(spark: SparkSession, cfg: DatagenConfig, out: str, store: Config | None = None) -> dict:
    """Write every source, the ground truth and ``_manifest.json`` under ``out``; return the manifest.

    ``store``: the config whose storage settings reach ``out`` (runtime/storage.py), for a remote ``out``.
    """
    customers = customers_frame(spark, cfg).cache()
    frames = source_frames(customers, cfg)
    manifest: dict = {
        "seed": cfg.seed,
        "customers": cfg.customers,
        "start_date": cfg.start_date.isoformat(),
        "end_date": cfg.end_date.isoformat(),
        "rows": {},
        "dirt": {},
    }
    for source, frame in frames.items():
        path = f"{out}/{source}"
        rows, dirt = write_source(
            spark, cfg, frame, FORMATS[source], path, store, partitions=lambda n: max(1, n // 2_000_000)
        )
        manifest["rows"][source] = rows
        manifest["dirt"][source] = dirt
    customers.select("customer_ref", "group", "mover").coalesce(1).write.mode("overwrite").parquet(
        f"{out}/_ground_truth"
    )
    customers.unpersist()
    storage.write_text(store, storage.join(out, "_manifest.json"), json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def source_frames(customers: DataFrame, cfg: DatagenConfig) -> dict[str, DataFrame]:
    """Every source's rows (with ``_dirt``, no malformed lines yet) for ``customers`` (``customers_frame``)."""
    orders, items = orders_frames(customers, cfg)
    return {
        "crm_customers": crm_frame(customers, cfg),
        "orders": orders,
        "order_items": items,
        "web_events": web_events_frame(customers, cfg),
        "email_events": email_events_frame(customers, cfg),
        "support_tickets": support_tickets_frame(customers, cfg),
        "survey_responses": survey_frame(customers, cfg),
    }


def write_source(
    spark: SparkSession,
    cfg: DatagenConfig,
    frame: DataFrame,
    fmt: str,
    path: str,
    store: Config | None,
    partitions: Callable[[int], int],
    tag: str = "",
    write_empty: bool = True,
) -> tuple[int, dict[str, int]]:
    """Write one source's rows (``frame``, its ``_dirt`` column dropped) to the folder ``path`` in ``fmt``,
    in ``partitions(rows)`` files, and for csv and json a file of malformed lines (``tag`` goes into their
    text). Without rows, nothing is written unless ``write_empty``.

    Returns:
        The rows written (malformed lines included) and the rows of each dirt kind.
    """
    frame = frame.cache()
    counts = {r["_dirt"]: r["count"] for r in frame.groupBy("_dirt").count().collect()}
    dirt = {k: counts[k] for k in sorted(k for k in counts if k is not None)}
    rows = sum(counts.values())
    if rows or write_empty:
        _write(frame.drop("_dirt"), fmt, path, partitions=partitions(rows))
    if rows and fmt in ("csv", "json") and cfg.dirt.malformed_line > 0:
        malformed = _malformed_count(rows, cfg.dirt.malformed_line)
        if malformed:
            columns = [c for c in frame.columns if c != "_dirt"]
            bad = (
                _malformed_csv(spark, columns, malformed, tag)
                if fmt == "csv"
                else _malformed_json(spark, malformed, tag)
            )
            _write(bad, "csv" if fmt == "csv" else "text", path, partitions=1, mode="append")
            if fmt == "json":
                storage.rename_suffix(store, path, ".txt", ".json")
            dirt["malformed_line"] = malformed
            rows += malformed
    frame.unpersist()
    return rows, dirt


def _write(df: DataFrame, fmt: str, path: str, partitions: int, mode: str = "overwrite") -> None:
    writer = df.repartition(partitions).write.mode(mode)
    if fmt == "csv":
        # Keep white space as generated: CRM duplicates differ from the original by it.
        writer.options(
            header="true",
            timestampFormat="yyyy-MM-dd'T'HH:mm:ss",
            ignoreLeadingWhiteSpace="false",
            ignoreTrailingWhiteSpace="false",
        ).csv(path)
    elif fmt == "json":
        writer.option("timestampFormat", "yyyy-MM-dd'T'HH:mm:ss'Z'").json(path)
    elif fmt == "text":
        writer.text(path)
    else:
        writer.parquet(path)
