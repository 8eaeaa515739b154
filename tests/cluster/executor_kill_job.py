"""A deterministic Spark job over the generated orders and order items, for the executor-kill test.

    spark-submit ... executor_kill_job.py DATA OUT GATE

Per customer_ref: orders, order value in cents, order lines, units and line value in cents (items joined to
their order), written as Parquet to OUT. Money is summed in whole cents so the result is exact whatever the
order of the additions, and a run that lost an executor must write exactly the rows of one that did not.

The final stage (reading the aggregation's shuffle, then writing OUT) passes its rows through a gate: the
first attempt of each of its tasks (in any attempt of the stage) writes ``GATE/started-<partition>``, holding
its working directory (the executor's folder in the worker's work dir: ``.../<app id>/<executor id>``), and
waits until ``GATE/release`` exists. The test kills that executor while the tasks wait, so the kill lands
while tasks run and the map outputs they read are lost with it; retried tasks and resubmitted stages do not
wait.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

ORDERS = "order_id STRING, customer_ref STRING, amount DOUBLE"
ITEMS = "order_id STRING, quantity INT, unit_price DOUBLE"
GATE_TIMEOUT = 600  # seconds a first attempt waits for the release at most (the test gives up before)


def gate(folder: str):
    def passing(batches):
        from pyspark import TaskContext

        name = f"started-{TaskContext.get().partitionId()}"
        if not Path(folder, name).exists():  # the first attempt of this task (of any attempt of its stage)
            Path(folder, f".{name}").write_text(os.getcwd())
            Path(folder, f".{name}").rename(Path(folder, name))  # whole when seen
            parent, deadline = os.getppid(), time.monotonic() + GATE_TIMEOUT
            # Until released; also stop if the parent (the executor's Python daemon) is gone.
            while not Path(folder, "release").exists() and time.monotonic() < deadline:
                if os.getppid() != parent:
                    raise RuntimeError("the executor of this task is gone")
                time.sleep(0.2)
        yield from batches

    return passing


def customer_totals(spark: SparkSession, data: str):
    # Explicit schemas: no schema-inference jobs before the real work.
    orders = (
        spark.read.schema(ORDERS)
        .parquet(f"{data}/orders")
        .select("order_id", "customer_ref", F.round(F.col("amount") * 100).cast("long").alias("cents"))
    )
    lines = (
        spark.read.schema(ITEMS)
        .parquet(f"{data}/order_items")
        .groupBy("order_id")
        .agg(
            F.count(F.lit(1)).alias("lines"),
            F.sum("quantity").cast("long").alias("units"),
            F.sum(F.col("quantity") * F.round(F.col("unit_price") * 100).cast("long")).alias("line_cents"),
        )
    )
    per_order = orders.join(lines, "order_id", how="left")
    return per_order.groupBy("customer_ref").agg(
        F.count(F.lit(1)).alias("orders"),
        F.sum("cents").alias("order_cents"),
        F.coalesce(F.sum("lines"), F.lit(0)).alias("lines"),
        F.coalesce(F.sum("units"), F.lit(0)).alias("units"),
        F.coalesce(F.sum("line_cents"), F.lit(0)).alias("line_cents"),
    )


def main(data: str, out: str, gate_folder: str) -> None:
    spark = SparkSession.builder.appName("microseg-executor-kill").getOrCreate()
    totals = customer_totals(spark, data)
    totals.mapInArrow(gate(gate_folder), totals.schema).write.mode("overwrite").parquet(out)
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
