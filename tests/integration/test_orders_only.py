"""An orders-only feed (silver.customers and silver.orders only, written directly) through features, train and
assign, by macro segment: churned segments are told apart from each other, never called recent, and the layer
the feed cannot inform (engagement) is one segment per macro with the reason in the summary."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from pyspark.sql import functions as F

from microseg.cli import main
from microseg.runtime import lake, tables

pytestmark = pytest.mark.integration

AS_OF = dt.date(2025, 6, 30)
SETTINGS = [
    f"run.as_of={AS_OF}",
    "train.by_macro=true",
    "train.layers.preference=null",
    "train.layers.value.algorithms=[kmeans]",
    "train.layers.engagement.algorithms=[kmeans]",
    "train.k_min=2",
    "train.k_max=4",
    "train.min_macro_size=100",
    "profile.k_anonymity=10",
    "tables.metastore=none",  # the session's catalog names stay those of the shared lakes (test_pipeline_e2e)
]
# (customers, purchases, days back of the last purchase: range, spend per order): three churned patterns, one active.
PATTERNS = [
    (250, 1, (200, 260), 40.0),
    (250, 6, (300, 420), 300.0),
    (250, 2, (480, 640), 90.0),
    (250, 8, (1, 60), 120.0),
]


def silver_rows(seed: int = 7) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    customers, orders = [], []
    for p, (count, purchases, (near, far), spend) in enumerate(PATTERNS):
        for i in range(count):
            cid = f"p{p}-{i:03d}"
            last = near + rng.randrange(far - near)
            signup = AS_OF - dt.timedelta(days=last + 60 * purchases + rng.randrange(200))
            customers.append({"customer_id": cid, "crm_id": cid, "country": "GB", "consent_profiling": True,
                              "signup_date": signup})  # fmt: skip
            for n in range(purchases):
                ts = dt.datetime.combine(AS_OF - dt.timedelta(days=last + 45 * n), dt.time(10))
                value = round(spend * rng.uniform(0.8, 1.2), 2)
                orders.append({"order_id": f"{cid}-{n}", "customer_id": cid, "order_ts": ts, "currency": "EUR",
                               "amount": value, "amount_base": value, "channel": "store",
                               "is_return": False})  # fmt: skip
    return customers, orders


@pytest.fixture(scope="module")
def run(spark, make_config, capsys_module_output):
    cfg = make_config(*SETTINGS)
    customers, orders = silver_rows()
    tables.overwrite(spark.createDataFrame(customers, lake.CUSTOMERS.ddl), cfg, lake.CUSTOMERS)
    tables.overwrite(spark.createDataFrame(orders, lake.ORDERS.ddl), cfg, lake.ORDERS)
    args = [f"--set={s}" for s in [*SETTINGS, f"lake.root={cfg.lake.root}", "spark.master=local[2]"]]
    stages = [a for s in ("features", "train", "assign") for a in ("--stage", s)]
    code, out = capsys_module_output(lambda: main(["run", *args, *stages]))
    assert code == 0, out
    profiles = tables.read(spark, cfg, lake.SEGMENT_PROFILES).where(F.col("as_of") == F.lit(AS_OF)).collect()
    return {"out": out, "profiles": [r.asDict() for r in profiles]}


@pytest.fixture(scope="module")
def capsys_module_output():
    """Call a function with stdout captured (capsys is function scoped); returns (its result, the text)."""
    import contextlib
    import io

    def call(function):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            result = function()
        return result, buffer.getvalue()

    return call


def test_churned_segments_are_compared_with_other_churned_customers_and_differ(run):
    churned = [p for p in run["profiles"] if p["layer"] == "value" and p["macro_segment"] == "churned"]
    assert len(churned) >= 2
    labels = [p["label"] for p in churned]
    assert len(set(labels)) == len(labels), labels
    for text in labels:
        assert text.endswith("than other churned customers") or text == "typical of the churned customers", text
        assert "recent buyer" not in text and "recently active" not in text, text
    # The planted patterns differ in recency: some churned segment is the more recent, and another the less.
    assert any(t.startswith("more recent") or ", more recent" in t or " more recent" in t for t in labels), labels
    assert any("less recent" in t for t in labels), labels


def test_the_layer_the_feed_cannot_inform_is_one_segment_with_its_reason(run):
    """Engagement on orders alone is days_since_activity, a twin of the value layer's recency_days: one segment per
    macro segment, with the reason, in the summary."""
    out = run["out"]
    reason = (
        "k=1: skipped: every informative feature (days_since_activity = recency_days) is one that layer value "
        "already segments on"
    )
    assert out.count(reason) == 2, out  # churned and active, the macro segments with a sweep
    assert "dropped web_sessions_90d: all null" in out and "dropped email_open_rate: all null" in out
    engagement = [p for p in run["profiles"] if p["layer"] == "engagement"]
    assert sorted(p["segment_id"] for p in engagement) == ["engagement-active-0", "engagement-churned-0"]
