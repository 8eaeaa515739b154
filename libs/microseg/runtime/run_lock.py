"""One run per as_of at a time: a lock row in ops.run_locks, held on a lease.

A run takes the lock before its first stage (``acquire``), renews the lease at a later stage's start when less
than half of it is left (``keep``) and deletes its row at its end, failed or not (``release``);
``runtime.runner`` does all three. Taking is one Delta MERGE: insert when no row holds the as_of, or take over
the row of a holder judged stale, which is one whose lease has expired, or one that ran on this host and whose
process is gone (a run killed with SIGKILL can be started again at once). The row is then read back. Two runs
started at once both MERGE: Delta's optimistic concurrency commits one and fails the other
(ConcurrentAppendException or a kin of it), which then reads the winner's row and stops with
``RunInProgressError``, never with Delta's stack trace. Fails closed: a lock that cannot be taken and
confirmed means the run does not start, and a renewal that finds the row gone or someone else's stops the run.

Times are naive UTC, from the clock of the process that writes them (as in ops.run_log); a lease
twice as long as any stage (``run.lock_lease_seconds``, an hour by default) absorbs clock skew between hosts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from dataclasses import dataclass, fields, replace

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import delta_ops, lake, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import RunInProgressError, RunLockError

log = logging.getLogger(__name__)

LOCKS = lake.RUN_LOCKS
TRIES = 3  # takes of the lock when a conflict left it with no live holder (a concurrent release or creation)
# The as_of of the row a lake-wide operation holds (microseg retract): no run starts while it is live, and it is
# taken only while no run is live. Each side takes its own row first and then looks at the other's.
LAKE_WIDE = dt.date(1900, 1, 1)
RENEW = "WHEN MATCHED AND t.run_id = s.run_id THEN UPDATE SET renewed_at = s.renewed_at, lease_until = s.lease_until"


@dataclass(frozen=True)
class Lock:
    """One row of ops.run_locks: the run that holds an as_of, where it runs, and until when."""

    as_of: dt.date
    run_id: str
    host: str
    pid: int
    stages: str
    started_at: dt.datetime
    renewed_at: dt.datetime
    lease_until: dt.datetime

    def stale(self, now: dt.datetime) -> bool:
        """Whether another run may take the lock: the lease has expired, or the holder ran on this host and its
        process is gone."""
        return self.lease_until < now or (self.host == socket.gethostname() and not _alive(self.pid))

    def describe(self) -> str:
        return (
            f"run {self.run_id} (stages {self.stages}) on host {self.host}, pid {self.pid}, started "
            f"{self.started_at:%Y-%m-%d %H:%M:%S} UTC, lease until {self.lease_until:%Y-%m-%d %H:%M:%S} UTC"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def held(spark: SparkSession, cfg: Config, as_of: dt.date) -> Lock | None:
    """The lock row of ``as_of``, or None (also when ops.run_locks does not exist yet)."""
    if not tables.exists(spark, cfg, LOCKS):
        return None
    rows = tables.read(spark, cfg, LOCKS).where(F.col("as_of") == F.lit(as_of)).collect()
    if len(rows) > 1:  # cannot happen through this module: every write is a MERGE or DELETE on the key
        raise RunLockError(f"{LOCKS} holds {len(rows)} rows for as_of {as_of}; {_remove_hint(cfg, as_of)}")
    return Lock(**{f.name: rows[0][f.name] for f in fields(Lock)}) if rows else None


def acquire(spark: SparkSession, cfg: Config, as_of: dt.date, run_id: str, stages: list[str]) -> Lock:
    """Take the lock of ``as_of`` for run ``run_id`` (which runs ``stages``), or fail.

    Raises:
        RunInProgressError: another run holds the as_of and is not stale.
        RunLockError: the lock could be neither taken nor found held by another run (fail closed).
    """
    error: Exception | None = None
    for attempt in range(1, TRIES + 1):
        current = held(spark, cfg, as_of)
        if current is not None and not current.stale(_now()):
            raise RunInProgressError(_in_progress(cfg, current))
        now = _now()
        mine = Lock(as_of, run_id, socket.gethostname(), os.getpid(), ", ".join(stages), now, now, _lease_end(cfg, now))
        try:
            _take(spark, cfg, mine, stale=current)
        except Exception as exc:  # a concurrent run's commit won (Delta's concurrency exceptions): read who holds it
            error = exc
            log.debug("taking the run lock of as_of %s: %s", as_of, exc)
        found = held(spark, cfg, as_of)
        if found is not None and found.run_id == run_id:
            if current is not None:
                log.warning("took over the run lock of as_of %s from stale %s", as_of, current.describe())
            lake_wide = held(spark, cfg, LAKE_WIDE) if as_of != LAKE_WIDE else None
            if lake_wide is not None and not lake_wide.stale(_now()):
                release(spark, cfg, found)
                raise RunInProgressError(
                    f"a lake-wide operation is in progress: {lake_wide.describe()}. Run again when it has ended"
                )
            return found
        if found is not None and not found.stale(_now()):
            raise RunInProgressError(_in_progress(cfg, found))
        time.sleep(attempt)  # nobody live holds it, yet the take failed: a conflict with a release or the creation
    raise RunLockError(
        f"could not take the run lock of as_of {as_of} in {tables.table_path(cfg, LOCKS)} after {TRIES} tries "
        f"(last error: {type(error).__name__ if error else 'none'}: {str(error).splitlines()[0] if error else ''}); "
        "nothing was run. Try again; if it keeps failing, check that the lake is writable"
    )


def acquire_lake(spark: SparkSession, cfg: Config, run_id: str, what: str) -> Lock:
    """Take the lake-wide lock for ``what`` (``retract``), or fail: while it is held no run starts, and it is not
    taken while any run holds a live lock.

    Raises:
        RunInProgressError: a run (or another lake-wide operation) is in progress.
    """
    lock = acquire(spark, cfg, LAKE_WIDE, run_id, [what])
    rows = tables.read(spark, cfg, LOCKS).where(F.col("as_of") != F.lit(LAKE_WIDE)).collect()
    live = [Lock(**{f.name: r[f.name] for f in fields(Lock)}) for r in rows]
    live = [other for other in live if not other.stale(_now())]
    if live:
        release(spark, cfg, lock)
        runs = "; ".join(f"{other.describe()} (as_of {other.as_of})" for other in live)
        raise RunInProgressError(f"a run is in progress: {runs}. Nothing was changed; {what} when it has ended")
    return lock


def _take(spark: SparkSession, cfg: Config, mine: Lock, stale: Lock | None) -> None:
    """One commit: create the table with ``mine``, or MERGE ``mine`` in where no row holds the as_of, where the
    row is ``stale``'s (still), or where the row's lease has expired."""
    row = _row(spark, mine)
    if not tables.exists(spark, cfg, LOCKS):
        tables.create(row, cfg, LOCKS)  # of two concurrent creations, one fails
        return
    takeover = "t.lease_until < s.renewed_at"
    if stale is not None:
        takeover += f" OR t.run_id = {delta_ops.literal(stale.run_id)}"
    clauses = [f"WHEN MATCHED AND ({takeover}) THEN UPDATE SET *", "WHEN NOT MATCHED THEN INSERT *"]
    tables.merge_on_keys(row, cfg, LOCKS, clauses)


def _row(spark: SparkSession, lock: Lock) -> DataFrame:
    # Every time goes in through a DataFrame, as it comes back: a SQL literal would be read in the session's time
    # zone, a Python datetime in the process's.
    return spark.createDataFrame([tuple(getattr(lock, f.name) for f in fields(Lock))], LOCKS.ddl)


def keep(spark: SparkSession, cfg: Config, lock: Lock) -> Lock:
    """``lock`` renewed (``renew``) if less than half of its lease is left, else as it is: a stage that starts
    still has at least half a lease, and a short run commits nothing to the lock table between its stages."""
    if lock.lease_until - _now() > dt.timedelta(seconds=cfg.run.lock_lease_seconds / 2):
        return lock
    return renew(spark, cfg, lock)


def renew(spark: SparkSession, cfg: Config, lock: Lock) -> Lock:
    """Extend the lease of ``lock`` by ``run.lock_lease_seconds`` from now; returns the renewed lock.

    Raises:
        RunLockError: the row is not this run's any more (its lease expired and another run took it), or the
            renewal could not be confirmed: the run stops.
    """
    for attempt in range(1, TRIES + 1):
        now = _now()
        renewed = replace(lock, renewed_at=now, lease_until=_lease_end(cfg, now))
        try:
            tables.merge_on_keys(_row(spark, renewed), cfg, LOCKS, [RENEW])
        except Exception as exc:  # a concurrent commit to the lock table: look, then try again
            log.debug("renewing the run lock of as_of %s: %s", lock.as_of, exc)
        found = held(spark, cfg, lock.as_of)
        if found is None or found.run_id != lock.run_id:
            holder = f"now held by {found.describe()}" if found else "gone"
            raise RunLockError(
                f"this run ({lock.run_id}) lost the run lock of as_of {lock.as_of}: its lease ran until "
                f"{lock.lease_until:%Y-%m-%d %H:%M:%S} UTC and the lock is {holder}. The run stops here; if a stage "
                "ran longer than the lease, raise run.lock_lease_seconds"
            )
        if found.renewed_at > lock.renewed_at:  # both as read back: no time zone between them
            return found
        time.sleep(attempt)
    raise RunLockError(f"could not renew the run lock of as_of {lock.as_of} (run {lock.run_id}); the run stops here")


def release(spark: SparkSession, cfg: Config, lock: Lock) -> None:
    """Delete the lock's row, if it is still this run's. A failure is logged, not raised: the run's own outcome
    stands, and the lease (or, on this host, the process's end) frees the as_of."""
    try:
        tables.delete(spark, cfg, LOCKS, _own(lock))
    except Exception as exc:
        log.warning(
            "could not release the run lock of as_of %s (%s: %s); it frees itself when the lease ends at %s UTC, "
            "or at once for a run on this host once this process has exited",
            lock.as_of,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            f"{lock.lease_until:%Y-%m-%d %H:%M:%S}",
        )


def _own(lock: Lock) -> str:
    return f"as_of = {delta_ops.literal(lock.as_of)} AND run_id = {delta_ops.literal(lock.run_id)}"


def _lease_end(cfg: Config, now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=cfg.run.lock_lease_seconds)


def _remove_hint(cfg: Config, as_of: dt.date) -> str:
    return (
        "to remove the lock by hand: "
        f"DELETE FROM {delta_ops.identifier(tables.table_path(cfg, LOCKS))} WHERE as_of = {delta_ops.literal(as_of)}"
    )


def _in_progress(cfg: Config, holder: Lock) -> str:
    return (
        f"a run for this as_of is in progress: {holder.describe()} (as_of {holder.as_of}). Wait for it to end, then "
        "run again: the stages it completed are skipped unless --rerun. If that run is dead: on host "
        f"{holder.host} a new run takes the lock at once once process {holder.pid} is gone; from another host, "
        f"after the lease ends at {holder.lease_until:%Y-%m-%d %H:%M:%S} UTC; or, sure that it is dead, "
        f"{_remove_hint(cfg, holder.as_of)} AND run_id = {delta_ops.literal(holder.run_id)}"
    )
