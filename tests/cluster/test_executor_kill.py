"""An executor JVM killed with SIGKILL mid-job on the standalone cluster: the job still completes, with the result
of an uninterrupted run.

The job (executor_kill_job.py: per-customer totals of the generated orders and order items, through two
shuffles) is submitted to the test's cluster in the background after the pipeline (conftest.py, step
executor_kill). When a task of its last stage waits at the job's gate, the step SIGKILLs that task's executor
(the CoarseGrainedExecutorBackend process found by its folder in this worker's work dir), waits for the worker to
launch a new executor for the application, and opens the gate. Spark has to retry the lost task and, the map
outputs it reads having died with the executor, run their stage again.

What is checked: the result equals totals computed here with pandas from the same Parquet files (whole table,
exact: money in cents); the event log shows the task lost with its executor (exit code 137), the executor
removed, a new one added, the map stage run again and every job succeeded; the master shows the application
FINISHED; nothing of the killed executor still runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from cluster_utils import event_log, java_available, processes

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not java_available(), reason="Spark standalone needs Java (17): no java on PATH and no JAVA_HOME"
    ),
]

COLUMNS = ["customer_ref", "orders", "order_cents", "lines", "units", "line_cents"]


@pytest.fixture(scope="module")
def killed(cluster_run) -> dict:
    """The executor_kill step, over: what it killed, the job's event log, result folder and input data."""
    cluster_run.finished("executor_kill")
    kill = cluster_run.kill
    return {
        **kill,
        "events": event_log(cluster_run.kill_dir / "events", kill["app_id"]),
        "result": cluster_run.kill_dir / "result",
        "data": cluster_run.data,
        "cluster": cluster_run.cluster,
    }


def cents(values: pd.Series) -> pd.Series:
    return (values * 100).round().astype("int64")


def expected_totals(data: Path) -> pd.DataFrame:
    """The job's result computed with pandas: per customer_ref, orders and their value, order lines, units and
    line value (items summed per order, then joined to their order; orders without items count 0)."""
    orders = pd.read_parquet(data / "orders", columns=["order_id", "customer_ref", "amount"])
    items = pd.read_parquet(data / "order_items", columns=["order_id", "quantity", "unit_price"])
    items["line_cents"] = items["quantity"].astype("int64") * cents(items["unit_price"])
    per_order = items.groupby("order_id").agg(
        lines=("quantity", "size"), units=("quantity", "sum"), line_cents=("line_cents", "sum")
    )
    orders = orders.assign(order_cents=cents(orders["amount"])).join(per_order, on="order_id", how="left")
    orders[["lines", "units", "line_cents"]] = orders[["lines", "units", "line_cents"]].fillna(0).astype("int64")
    totals = orders.groupby("customer_ref", dropna=False).agg(
        orders=("order_id", "size"),
        order_cents=("order_cents", "sum"),
        lines=("lines", "sum"),
        units=("units", "sum"),
        line_cents=("line_cents", "sum"),
    )
    return totals.reset_index()


def normalised(df: pd.DataFrame) -> pd.DataFrame:
    df = df[COLUMNS].sort_values("customer_ref", ignore_index=True)
    return df.astype({c: "int64" for c in COLUMNS[1:]})


def of_type(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["Event"] == f"SparkListener{name}"]


def test_the_job_gives_the_uninterrupted_result(killed):
    expected = normalised(expected_totals(killed["data"]))
    assert len(expected) > 100 and expected["lines"].sum() > 0, expected.describe()
    result = normalised(pd.read_parquet(killed["result"]))
    pd.testing.assert_frame_equal(result, expected)


def test_the_executor_was_killed_while_its_tasks_ran(killed):
    executor, events = killed["executor_id"], killed["events"]
    lost = [
        e
        for e in of_type(events, "TaskEnd")
        if e["Task End Reason"]["Reason"] == "ExecutorLostFailure" and e["Task Info"]["Executor ID"] == executor
    ]
    assert len(lost) >= killed["waiting_tasks"] >= 1, lost
    removed = [e for e in of_type(events, "ExecutorRemoved") if e["Executor ID"] == executor]
    assert len(removed) == 1 and "exited with code 137" in removed[0]["Removed Reason"], removed  # 128 + SIGKILL


def test_the_worker_relaunched_it_and_the_lost_map_output_was_recomputed(killed):
    executor, events = killed["executor_id"], killed["events"]
    added = [e["Executor ID"] for e in of_type(events, "ExecutorAdded")]
    assert added[0] == executor and set(killed["new_executors"]) <= set(added[1:]), added
    done_by_new = [
        e
        for e in of_type(events, "TaskEnd")
        if e["Task End Reason"]["Reason"] == "Success" and e["Task Info"]["Executor ID"] in killed["new_executors"]
    ]
    assert done_by_new, "the new executor completed no task"
    again = [e["Stage Info"] for e in of_type(events, "StageCompleted") if e["Stage Info"]["Stage Attempt ID"] > 0]
    assert any("Failure Reason" not in s for s in again), "no stage was run again after the executor was lost"
    results = [e["Job Result"]["Result"] for e in of_type(events, "JobEnd")]
    assert results and set(results) == {"JobSucceeded"}, results


def test_the_application_finished_and_nothing_of_the_killed_executor_runs(killed):
    apps = {app["id"]: app["state"] for app in killed["cluster"].state()["completedapps"]}
    assert apps.get(killed["app_id"]) == "FINISHED", apps
    left = [(pid, args) for pid, args, cwd in processes() if cwd == killed["folder"] or killed["folder"] in cwd.parents]
    assert not left, left
