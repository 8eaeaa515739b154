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

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import storage
from microseg.runtime.config import Config, DatagenConfig
from microseg.synthetic.commerce import orders_frames
from microseg.synthetic.events import email_events_frame, support_tickets_frame, survey_frame, web_events_frame
from microseg.synthetic.people import crm_frame, customers_frame

SOURCES = (
    "crm_customers",
    "orders",
    "order_items",
    "web_events",
    "email_events",
    "support_tickets",
    "survey_responses",
)


def _malformed_count(rows: int, rate: float) -> int:
    return round(rows * rate)


def _malformed_csv(spark: SparkSession, columns: list[str], count: int) -> DataFrame:
    """Rows whose typed fields cannot be parsed: a reader with an explicit schema flags them as corrupt."""
    return spark.range(count).select(
        *[F.format_string(f"#garbled-{i}-%d#", F.col("id")).alias(c) for i, c in enumerate(columns)]
    )


def _malformed_json(spark: SparkSession, count: int) -> DataFrame:
    return spark.range(count).select(
        F.format_string('{"event_id": "BROKEN-%d", "event_ts": ', F.col("id")).alias("value")
    )


def generate(spark: SparkSession, cfg: DatagenConfig, out: str, store: Config | None = None) -> dict:
    """Write every source, the ground truth and ``_manifest.json`` under ``out``; return the manifest.

    ``store``: the config whose storage settings reach ``out`` (runtime/storage.py), for a remote ``out``.
    """
    customers = customers_frame(spark, cfg).cache()
    orders, items = orders_frames(customers, cfg)
    frames = {
        "crm_customers": ("csv", crm_frame(customers, cfg)),
        "orders": ("parquet", orders),
        "order_items": ("parquet", items),
        "web_events": ("json", web_events_frame(customers, cfg)),
        "email_events": ("csv", email_events_frame(customers, cfg)),
        "support_tickets": ("csv", support_tickets_frame(customers, cfg)),
        "survey_responses": ("json", survey_frame(customers, cfg)),
    }
    manifest: dict = {
        "seed": cfg.seed,
        "customers": cfg.customers,
        "start_date": cfg.start_date.isoformat(),
        "end_date": cfg.end_date.isoformat(),
        "rows": {},
        "dirt": {},
    }
    for source, (fmt, frame) in frames.items():
        frame = frame.cache()
        counts = {r["_dirt"]: r["count"] for r in frame.groupBy("_dirt").count().collect()}
        dirt = {k: counts[k] for k in sorted(k for k in counts if k is not None)}
        rows = sum(counts.values())
        path = f"{out}/{source}"
        _write(frame.drop("_dirt"), fmt, path, partitions=max(1, rows // 2_000_000))
        if fmt in ("csv", "json") and cfg.dirt.malformed_line > 0:
            malformed = _malformed_count(rows, cfg.dirt.malformed_line)
            if malformed:
                columns = [c for c in frame.columns if c != "_dirt"]
                bad = _malformed_csv(spark, columns, malformed) if fmt == "csv" else _malformed_json(spark, malformed)
                _write(bad, "csv" if fmt == "csv" else "text", path, partitions=1, mode="append")
                if fmt == "json":
                    storage.rename_suffix(store, path, ".txt", ".json")
                dirt["malformed_line"] = malformed
                rows += malformed
        frame.unpersist()
        manifest["rows"][source] = rows
        manifest["dirt"][source] = dirt
    customers.select("customer_ref", "group", "mover").coalesce(1).write.mode("overwrite").parquet(
        f"{out}/_ground_truth"
    )
    customers.unpersist()
    storage.write_text(store, storage.join(out, "_manifest.json"), json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


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
