"""SQL clients on the tables by name: the Spark Thrift Server with beeline over a PostgreSQL-backed Hive
metastore, while the pipeline writes a new snapshot; and `microseg sql` (spark-sql) over embedded Derby.

Every server and client here is a process of its own, as a data team would run them: `microseg migrate`
names an existing lake's tables in the metastore, `microseg sql-server` answers JDBC clients, `microseg run`
writes the next snapshot through the same metastore. The expected values come from Spark reading the
Delta tables by path in this test's own session.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from servers import free_port, serving

from microseg.runtime import lake, tables
from microseg.runtime.sql_endpoint import beeline_command
from microseg.stages import run_pipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MICROSEG = str(Path(sys.executable).parent / "microseg")
FIRST, NEXT = dt.date(2025, 12, 31), dt.date(2026, 1, 1)
SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
    "train.by_macro=false",
    "train.layers.engagement=null",
    "train.layers.preference=null",
    "train.layers.value.algorithms=[kmeans]",
    "train.k_min=2",
    "train.k_max=5",
]
# Servers take seconds here and minutes on a busy machine: slow is fine, red is not.
START_TIMEOUT, RUN_TIMEOUT = 600, 1500


def readme_queries() -> dict[str, str]:
    """The README's example queries (its ```sql block), by their leading comment."""
    block = re.search(r"```sql\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    queries = {}
    for statement in filter(str.strip, block.split(";")):
        comment, _, sql = statement.strip().partition("\n")
        queries[comment.removeprefix("-- ").strip()] = sql.strip() + ";"
    return queries


def _microseg(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    done = subprocess.run([MICROSEG, *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"microseg {args[0]} failed:\n{done.stderr[-4000:]}"
    return done


def beeline(port: int, sql: str) -> list[dict[str, str]]:
    done = subprocess.run(
        beeline_command("127.0.0.1", port, sql), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, f"beeline: {sql}\n{done.stderr[-3000:]}"
    return list(csv.DictReader(io.StringIO(done.stdout)))


@pytest.fixture(scope="module")
def served(spark, generated, copy_lake, make_config, postgres_server, tmp_path_factory):
    """A lake with FIRST's segments, named in a PostgreSQL metastore, and a Thrift Server on that metastore."""
    data, _ = generated
    lake_root = copy_lake("sql")
    cfg = make_config(f"sources.root={data}", *SETTINGS, lake=lake_root)
    run_pipeline(spark, cfg, as_of=FIRST, stages=["train", "assign", "profile"], progress=lambda _: None)

    url = postgres_server.create_database("metastore")
    warehouse = tmp_path_factory.mktemp("warehouse")
    metastore = [  # the README's PostgreSQL metastore keys
        "tables.metastore=hive",
        f"spark.settings.spark.hadoop.javax.jdo.option.ConnectionURL='{url}'",
        "spark.settings.spark.hadoop.javax.jdo.option.ConnectionDriverName=org.postgresql.Driver",
        "spark.settings.spark.hadoop.javax.jdo.option.ConnectionUserName=microseg",
        "spark.settings.spark.hadoop.javax.jdo.option.ConnectionPassword=''",
        "spark.settings.spark.hadoop.datanucleus.schema.autoCreateAll='false'",
        "spark.settings.spark.hadoop.datanucleus.schema.autoCreateTables='true'",
        "spark.settings.spark.hadoop.datanucleus.schema.autoCreateColumns='true'",
        "spark.settings.spark.hadoop.datanucleus.schema.autoCreateConstraints='false'",
        "spark.settings.spark.hadoop.hive.metastore.schema.verification='false'",
        f"spark.settings.spark.sql.warehouse.dir={warehouse}",
    ]
    args = [f"--set={s}" for s in [f"lake.root={lake_root}", f"sources.root={data}", *SETTINGS, *metastore]]
    migrated = _microseg("migrate", *args)
    assert "microseg_gold.segment_assignments" in migrated.stdout

    port = free_port()
    log = tmp_path_factory.mktemp("thrift") / "server.log"
    with serving([MICROSEG, "sql-server", "--port", str(port), *args], port, log, timeout=START_TIMEOUT):
        yield {"cfg": cfg, "port": port, "args": args}


def test_readme_queries_through_the_thrift_server_match_the_tables(spark, served):
    cfg, port = served["cfg"], served["port"]
    queries = readme_queries()
    assert set(queries) >= {"Segment sizes today", "A customer's segment history", "This week's migrations"}

    sizes = beeline(port, queries["Segment sizes today"])
    latest = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(F.col("as_of") == FIRST)
    expected = latest.groupBy("layer", "segment_id").count().collect()
    assert sorted((r["layer"], r["segment_id"], int(r["customers"])) for r in sizes) == sorted(map(tuple, expected))
    assert len(sizes) >= 2

    customer = latest.orderBy("customer_id").first()["customer_id"]
    sql = queries["A customer's segment history"].replace("cu_0123456789abcdef0123", customer)
    history = beeline(port, sql)
    truth = tables.read(spark, cfg, lake.SEGMENT_HISTORY).where(F.col("customer_id") == customer).collect()
    assert sorted((r["layer"], r["segment_id"], r["valid_from"]) for r in history) == sorted(
        (r["layer"], r["segment_id"], str(r["valid_from"])) for r in truth
    )
    assert history and all(r["is_current"] == "true" for r in history)


def test_queries_see_a_new_snapshot_once_the_run_commits_and_not_before(spark, served):
    """`microseg run` of the next day through the same PostgreSQL metastore while beeline keeps asking."""
    cfg, port = served["cfg"], served["port"]
    count_next = f"SELECT COUNT(*) AS n FROM microseg_gold.segment_assignments WHERE as_of = DATE'{NEXT}';"
    version_before = tables.version(spark, cfg, lake.SEGMENT_ASSIGNMENTS)
    stages = ["--stage=features", "--stage=assign", "--stage=profile"]
    run = subprocess.Popen(
        [MICROSEG, "run", "--as-of", str(NEXT), *stages, *served["args"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen_during_run = []
    while run.poll() is None:
        n = int(beeline(port, count_next)[0]["n"])
        if run.poll() is None:
            seen_during_run.append(n)
        time.sleep(2)
    output = run.stdout.read()
    assert run.wait(timeout=RUN_TIMEOUT) == 0, output[-4000:]
    assert seen_during_run, "the run ended before a query could be answered during it"

    expected = tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(F.col("as_of") == NEXT).count()
    assert expected > 0
    # One commit makes the day visible, whole: before it none of its rows, after it all of them.
    assert set(seen_during_run) <= {0, expected}
    assert int(beeline(port, count_next)[0]["n"]) == expected

    queries = readme_queries()
    moves = beeline(port, queries["This week's migrations"])
    truth = tables.read(spark, cfg, lake.SEGMENT_MIGRATIONS).where(F.col("as_of") == NEXT).collect()
    assert sorted((r["layer"], r["from_segment"], r["to_segment"], int(r["customers"])) for r in moves) == sorted(
        (r["layer"], r["from_segment"], r["to_segment"], r["customers"]) for r in truth
    )
    sql = queries["Changes to the assignments since a table version"].replace("', 1)", f"', {version_before + 1})")
    changes = beeline(port, sql)
    feed = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", version_before + 1)
        .load(tables.table_path(cfg, lake.SEGMENT_ASSIGNMENTS))
        .groupBy("_change_type", "_commit_version")
        .count()
        .collect()
    )
    assert sorted((r["_change_type"], int(r["_commit_version"]), int(r["rows"])) for r in changes) == sorted(
        map(tuple, feed)
    )
    assert {r["_change_type"] for r in changes} == {"insert"}  # a new day: inserts only


def test_microseg_sql_answers_the_readme_command_from_embedded_derby(spark, served, tmp_path):
    """`microseg sql -e ...` (spark-sql) over a Derby metastore that `microseg migrate` filled."""
    cfg = served["cfg"]
    derby = [f"--set=lake.root={cfg.lake_root}", *(f"--set={s}" for s in SETTINGS)]
    derby.append(f"--set=tables.metastore_dir={tmp_path / 'metastore'}")
    _microseg("migrate", *derby)
    command = re.search(r'microseg sql -e "(.*?)"', (REPO / "README.md").read_text()).group(1)
    command = re.sub(r"DATE'[0-9-]+'", f"DATE'{FIRST}'", command)
    rows = _microseg("sql", "-e", command, *derby).stdout.strip().splitlines()
    counts = dict(line.split("\t") for line in rows)
    expected = (
        tables.read(spark, cfg, lake.SEGMENT_ASSIGNMENTS).where(F.col("as_of") == FIRST).groupBy("segment_id").count()
    )
    assert {k: int(v) for k, v in counts.items()} == {r["segment_id"]: r["count"] for r in expected.collect()}
    assert os.path.exists(tmp_path / "metastore" / "metastore_db")
