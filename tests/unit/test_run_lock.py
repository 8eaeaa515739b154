"""One run per as_of at a time: the lock in ops.run_locks, on real Delta tables (runtime/run_lock.py)."""

import datetime as dt
import os
import socket
import subprocess
import threading

import pytest

from microseg.runtime import lake, run_lock, tables
from microseg.runtime.errors import RunInProgressError, RunLockError
from microseg.runtime.runlog import StageReport
from microseg.runtime.runner import run_stages

AS_OF, OTHER_AS_OF = dt.date(2025, 6, 30), dt.date(2025, 7, 31)
HOUR = dt.timedelta(hours=1)


def now() -> dt.datetime:
    """Naive UTC now, as the lock's rows hold it (read at each use: a suite can run for more than an hour)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def plant(spark, cfg, run_id, host, pid, lease_until, as_of=AS_OF):
    """A lock row written as another run would have left it (through tables.merge, not the module under test)."""
    row = (as_of, run_id, host, pid, "ingest, clean", now() - 2 * HOUR, now() - 2 * HOUR, lease_until)
    tables.merge(spark.createDataFrame([row], lake.RUN_LOCKS.ddl), cfg, lake.RUN_LOCKS)


def rows(spark, cfg):
    return sorted((str(r["as_of"]), r["run_id"]) for r in tables.read(spark, cfg, lake.RUN_LOCKS).collect())


def dead_pid():
    """The pid of a process that has ended (and was reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_live_holder_is_refused_with_who_holds_it_and_what_to_do(spark, make_config):
    cfg = make_config()
    mine = run_lock.acquire(spark, cfg, AS_OF, "run-a", ["ingest", "clean"])
    assert (mine.run_id, mine.host, mine.pid) == ("run-a", socket.gethostname(), os.getpid())
    assert dt.timedelta(seconds=3590) < mine.lease_until - mine.started_at <= dt.timedelta(seconds=3600)
    with pytest.raises(RunInProgressError) as refused:
        run_lock.acquire(spark, cfg, AS_OF, "run-b", ["train"])
    message = str(refused.value)
    assert message.startswith("a run for this as_of is in progress: run run-a (stages ingest, clean)")
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in message
    assert f"lease until {mine.lease_until:%Y-%m-%d %H:%M:%S} UTC" in message and "If that run is dead" in message
    # Another as_of is another lock.
    run_lock.acquire(spark, cfg, OTHER_AS_OF, "run-c", ["train"])
    assert rows(spark, cfg) == [(str(AS_OF), "run-a"), (str(OTHER_AS_OF), "run-c")]
    # A holder on another host with a live lease is refused too, whatever its pid.
    plant(spark, cfg, "run-far", "elsewhere.example", dead_pid(), now() + HOUR, as_of=dt.date(2025, 8, 31))
    with pytest.raises(RunInProgressError, match=r"run run-far .* on host elsewhere\.example"):
        run_lock.acquire(spark, cfg, dt.date(2025, 8, 31), "run-d", ["ingest"])
    # Released, the as_of is free: only the holder's own row goes.
    run_lock.release(spark, cfg, run_lock.Lock(**{**vars(mine), "run_id": "run-b"}))  # not run-b's: kept
    assert (str(AS_OF), "run-a") in rows(spark, cfg)
    run_lock.release(spark, cfg, mine)
    assert run_lock.acquire(spark, cfg, AS_OF, "run-b", ["train"]).run_id == "run-b"


def test_a_stale_holder_is_taken_over_and_a_renewal_finds_out(spark, make_config):
    cfg = make_config("run.lock_lease_seconds=600")
    # Killed on this host (its process is gone), lease still running: taken over at once.
    plant(spark, cfg, "run-killed", socket.gethostname(), dead_pid(), now() + HOUR)
    taken = run_lock.acquire(spark, cfg, AS_OF, "run-new", ["ingest"])
    assert rows(spark, cfg) == [(str(AS_OF), "run-new")]
    assert dt.timedelta(seconds=590) < taken.lease_until - taken.started_at <= dt.timedelta(seconds=600)
    renewed = run_lock.renew(spark, cfg, taken)
    assert renewed.renewed_at > taken.renewed_at and renewed.lease_until > taken.lease_until
    assert run_lock.held(spark, cfg, AS_OF) == renewed
    # Kept as it is while more than half the lease is left (no commit); renewed once less is.
    assert run_lock.keep(spark, cfg, renewed) == renewed
    assert run_lock.keep(spark, cfg.model_copy(update={"run": cfg.run.model_copy(update={"lock_lease_seconds": 1300})}),
                         renewed).renewed_at > renewed.renewed_at  # fmt: skip
    renewed = run_lock.held(spark, cfg, AS_OF)
    # On another host, whose processes cannot be seen from here: taken over once its lease has ended.
    plant(spark, cfg, "run-far", "elsewhere.example", os.getpid(), now() - dt.timedelta(seconds=1))
    assert run_lock.acquire(spark, cfg, AS_OF, "run-later", ["train"]).run_id == "run-later"
    # run-new's lease had been taken (by run-far, then run-later): its next renewal stops it.
    with pytest.raises(RunLockError, match=r"lost the run lock .* now held by run run-later"):
        run_lock.renew(spark, cfg, renewed)


def test_a_run_holds_the_lock_while_it_runs_and_releases_it_failed_or_not(spark, make_config):
    cfg = make_config()
    seen = []

    def stage(name, fail=False):
        def run(spark, cfg, context):
            held = run_lock.held(spark, cfg, context.as_of)
            seen.append((name, held.run_id == context.run_id))
            if fail:
                raise ValueError("stage failed")
            return StageReport(name)

        return run

    result = run_stages(spark, cfg, [("one", stage("one")), ("two", stage("two"))], as_of=AS_OF)
    assert seen == [("one", True), ("two", True)] and rows(spark, cfg) == []
    with pytest.raises(ValueError, match="stage failed"):
        run_stages(spark, cfg, [("one", stage("one", fail=True))], as_of=AS_OF)
    assert rows(spark, cfg) == []
    # Held by another live run: no stage starts.
    plant(spark, cfg, "run-other", "elsewhere.example", 1, now() + HOUR)
    seen.clear()
    with pytest.raises(RunInProgressError, match="a run for this as_of is in progress: run run-other"):
        run_stages(spark, cfg, [("one", stage("one"))], as_of=AS_OF)
    assert seen == [] and rows(spark, cfg) == [(str(AS_OF), "run-other")]
    assert result.run.as_of == AS_OF


def test_the_cli_says_when_the_embedded_metastore_is_open_in_another_process(monkeypatch, tmp_path, capsys):
    """With the embedded metastore (Derby: one process at a time), a second run fails before any lock: at its first
    table lookup, with Hive's error. The CLI says what it means instead of a traceback."""
    from microseg import cli

    hive = "org.apache.hadoop.hive.ql.metadata.HiveException: java.lang.RuntimeException: Unable to instantiate "
    hive += "org.apache.hadoop.hive.ql.metadata.SessionHiveMetaStoreClient"

    def busy(cfg, args):
        raise RuntimeError(hive)  # pyspark's AnalysisException, as completed_stages' table lookup raises it

    monkeypatch.setitem(cli.COMMANDS, "tables", busy)
    conf = str(cli.Path(__file__).resolve().parents[2] / "conf" / "local.yaml")
    assert cli.main(["tables", "--conf", conf, "--set", f"lake.root={tmp_path}"]) == cli.EXIT_FAILURE
    assert f"the embedded metastore (Derby, in {tmp_path}/_metastore) could not be opened" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="SessionHiveMetaStoreClient"):  # another metastore: Hive's own error
        cli.main(["tables", "--conf", conf, "--set", f"lake.root={tmp_path}", "--set", "tables.metastore=hive"])


def test_two_takes_at_once_one_holds_the_other_is_told(spark, make_config):
    """Both find the as_of free and MERGE at the same time: Delta commits one; the other's conflict
    (ConcurrentAppendException) is read back as the winner's lock."""
    cfg = make_config()
    plant(spark, cfg, "run-old", "elsewhere.example", 1, now() + HOUR, as_of=OTHER_AS_OF)  # the table exists
    start, outcomes = threading.Barrier(2), {}

    def take(run_id):
        start.wait()
        try:
            outcomes[run_id] = run_lock.acquire(spark, cfg, AS_OF, run_id, ["ingest"]).run_id
        except RunInProgressError as exc:
            outcomes[run_id] = str(exc)

    threads = [threading.Thread(target=take, args=(run_id,)) for run_id in ("run-x", "run-y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    winner = run_lock.held(spark, cfg, AS_OF).run_id
    loser = ({"run-x", "run-y"} - {winner}).pop()
    assert outcomes[winner] == winner
    assert outcomes[loser].startswith(f"a run for this as_of is in progress: run {winner} ")


def test_a_lake_wide_operation_and_runs_exclude_each_other(spark, make_config):
    cfg = make_config()
    run = run_lock.acquire(spark, cfg, AS_OF, "run-a", ["ingest"])
    with pytest.raises(RunInProgressError, match=r"a run is in progress: run run-a .*retract when it has ended"):
        run_lock.acquire_lake(spark, cfg, "retract-1", "retract")
    assert rows(spark, cfg) == [(str(AS_OF), "run-a")]  # the refused operation left no row
    run_lock.release(spark, cfg, run)

    held = run_lock.acquire_lake(spark, cfg, "retract-2", "retract")
    with pytest.raises(
        RunInProgressError, match=r"lake-wide operation is in progress: run retract-2 \(stages retract\)"
    ):
        run_lock.acquire(spark, cfg, AS_OF, "run-b", ["ingest"])
    assert rows(spark, cfg) == [(str(run_lock.LAKE_WIDE), "retract-2")]  # the refused run left no row
    run_lock.release(spark, cfg, held)
    run_lock.release(spark, cfg, run_lock.acquire(spark, cfg, AS_OF, "run-c", ["ingest"]))
