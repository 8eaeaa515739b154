"""Spark plumbing every stage shares: caches released in ``finally``, and jobs that say what they serve.

Every Spark job of a stage runs in the job group ``microseg-<run id>-<stage>``, with a description
that names the stage and, where it helps, the layer and macro segment; the Spark UI and the
event log show it, and ``jobs_in_group`` counts the jobs a stage ran (the benchmark prints it).

Under Spark Connect the client has no SparkContext (``spark_context`` is None): a stage's jobs carry
its group as a job tag instead, descriptions are not set, the jobs are not counted (None), and
``default_parallelism`` and ``shared_value`` fall back as their docstrings say.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

from pyspark import SparkContext, StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType
from pyspark.util import inheritable_thread_target

T = TypeVar("T")


def spark_context(spark: SparkSession) -> SparkContext | None:
    """The SparkContext of ``spark``, or None for a Spark Connect session.

    Spark Connect gap: a Connect client has no SparkContext, hence no job groups or descriptions
    (local properties), no status tracker, no broadcast variables and no JVM (``spark.sparkContext``
    raises). The functions of this module that need one say what they do without it.
    """
    if is_remote(spark):
        return None
    return spark.sparkContext


def is_remote(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect session (pyspark.sql.connect.session.SparkSession)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@contextmanager
def cached(*frames: DataFrame, level: StorageLevel | None = None) -> Iterator[tuple[DataFrame, ...] | DataFrame]:
    """Persist ``frames`` for the block and unpersist them when it ends, also on an error.

    Yields the one frame, or a tuple when given several. A frame whose plan is cached already (by the
    caller, or an enclosing block) is left cached: Spark keys its cache by plan, so unpersisting it
    here would drop the owner's cache too.
    """
    kept: list[DataFrame] = []
    try:
        for frame in frames:
            if frame.storageLevel == StorageLevel.NONE:
                kept.append(frame.persist(level) if level is not None else frame.cache())
        yield frames[0] if len(frames) == 1 else tuple(frames)
    finally:
        for frame in kept:
            frame.unpersist()


def group_id(run_id: str, stage: str) -> str:
    return f"microseg-{run_id}-{stage}"


@contextmanager
def job_group(spark: SparkSession, group: str, description: str) -> Iterator[str]:
    """Run the block's Spark jobs in ``group`` with ``description``; restore the caller's group after.

    Under Spark Connect the jobs carry ``group`` as a job tag (``SparkSession.addTag``) and no description, and
    the server-side cache of the block's models that were collected is freed at its end (``release_models``).
    """
    context = spark_context(spark)
    if context is None:
        spark.addTag(group)
        try:
            yield group
        finally:
            spark.removeTag(group)
            release_models(spark)
        return
    before = (context.getLocalProperty("spark.jobGroup.id"), context.getLocalProperty("spark.job.description"))
    context.setJobGroup(group, description)
    try:
        yield group
    finally:
        if before[0] is not None:
            context.setJobGroup(before[0], before[1] or "")
        else:
            context.setLocalProperty("spark.jobGroup.id", None)
            context.setLocalProperty("spark.job.description", None)


@contextmanager
def described(spark: SparkSession, description: str) -> Iterator[None]:
    """Jobs of the block carry ``description`` (within the current group); the previous one comes back after.

    Nothing under Spark Connect (no job descriptions).
    """
    context = spark_context(spark)
    if context is None:
        yield
        return
    before = context.getLocalProperty("spark.job.description")
    context.setJobDescription(description)
    try:
        yield
    finally:
        context.setLocalProperty("spark.job.description", before)


def jobs_in_group(spark: SparkSession, group: str) -> int | None:
    """How many Spark jobs ran in ``group`` (as far as the status tracker retains them); None (unknown) under
    Spark Connect, whose client has no status tracker."""
    context = spark_context(spark)
    return None if context is None else len(context.statusTracker().getJobIdsForGroup(group))


def default_parallelism(spark: SparkSession) -> int:
    """The cluster's default parallelism (task slots); under Spark Connect, ``spark.default.parallelism``
    or the cores of a ``local[N]`` master if the server says, else 2 (the client cannot ask its SparkContext)."""
    context = spark_context(spark)
    if context is not None:
        return context.defaultParallelism
    setting = spark.conf.get("spark.default.parallelism", None)
    if setting:
        return int(setting)
    master = spark.conf.get("spark.master", None) or ""
    cores = master.removeprefix("local[").split("]")[0].split(",")[0] if master.startswith("local[") else ""
    return int(cores) if cores.isdigit() else 2


def shared_value(spark: SparkSession, value: T) -> Callable[[], T]:
    """``value`` for a job's tasks, as a function the tasks call: a broadcast variable, or under Spark Connect
    (no broadcast variables) the value itself, carried in the closure of the function that uses it."""
    context = spark_context(spark)
    if context is None:
        return lambda: value
    broadcast = context.broadcast(value)
    return lambda: broadcast.value


def pandas_udf(return_type: DataType) -> Callable[[Callable[..., object]], Callable[..., Column]]:
    """``@pandas_udf(return_type)`` made when first called, for the kind of session then running.

    Spark Connect gap: pyspark makes a classic or a Connect UDF by the mode of the process when the UDF
    is *defined* (``pyspark.sql.utils.is_remote``); a module-level ``@pandas_udf``, defined at import
    before any session, is a classic UDF, which fails under Spark Connect
    ([SESSION_OR_CONTEXT_NOT_EXISTS] SparkContext or SparkSession should be created first).
    """
    from pyspark.sql.functions import pandas_udf as make
    from pyspark.sql.utils import is_remote as remote_mode

    def wrap(function: Callable[..., object]) -> Callable[..., Column]:
        made: dict[bool, Callable[..., Column]] = {}

        @functools.wraps(function)
        def call(*columns: Column | str) -> Column:
            remote = remote_mode()
            if remote not in made:
                made[remote] = make(function, return_type)
            return made[remote](*columns)

        call.func = function  # the plain function, as pyspark's UDFs expose it
        return call

    return wrap


# Server-side ML cache entries of Connect models garbage-collected since the last release_models.
_released_models: list[str] = []


def defer_model_release() -> None:
    """Queue the server-side release of garbage-collected Spark Connect ML models (``release_models`` sends it).

    Spark Connect gap: pyspark 4.1 frees a Connect model's cache on the server from the model's ``__del__``, by
    an RPC whose gRPC call starts a thread. Run by the cyclic garbage collector at an arbitrary point of the
    main thread, it can wait forever for that thread to start (seen: a run hung in
    ``del_remote_cache -> _delete_ml_cache -> Thread.start``). Installed once per process for Connect sessions.
    """
    import pyspark.ml.util as ml_util

    if getattr(ml_util.del_remote_cache, "microseg_deferred", False):
        return

    def queue(ref_id: str) -> None:
        if ref_id is not None and "." not in ref_id:  # pyspark's own test for a server-side cache entry
            _released_models.append(ref_id)

    queue.microseg_deferred = True
    ml_util.del_remote_cache = queue


def release_models(spark: SparkSession) -> None:
    """Free the server-side cache of the Connect ML models collected so far (nothing for classic sessions)."""
    if not _released_models or spark_context(spark) is not None:
        return
    ids = list(_released_models)
    del _released_models[:]
    spark.client._delete_ml_cache(ids)


class _CountedLater:
    """An Observation's ``get`` for a row count that ``count_rows`` takes by a count of its own."""

    def __init__(self, df: DataFrame) -> None:
        self._df, self._rows = df, None

    @property
    def get(self) -> dict[str, int]:
        if self._rows is None:
            self._rows = self._df.count()
        return {"rows": self._rows}


RowCount = Observation | _CountedLater  # .get["rows"]


def count_rows(df: DataFrame) -> tuple[DataFrame, RowCount]:
    """``df``, and its row count (``.get["rows"]``) taken in the pass that first runs it (an Observation).

    Spark Connect gap: pyspark 4.1's Connect client cannot run a plan in which one Observation appears
    twice, as in a join of the observed frame with itself (TypeError: dict() got multiple values for
    keyword argument '<observation id>', from its Join.observations); classic Spark runs it. Under
    Spark Connect the rows are counted when ``get`` is first read, by a count of ``df`` (one more job).
    """
    if spark_context(df.sparkSession) is None:
        return df, _CountedLater(df)
    observation = Observation()
    return df.observe(observation, F.count(F.lit(1)).alias("rows")), observation


def in_parallel(spark: SparkSession, tasks: list[Callable[[], T]], workers: int) -> list[T]:
    """``outcomes`` of ``tasks``, raising the first failure (in task order) once every task has ended."""
    return raise_first(outcomes(spark, tasks, workers))


def raise_first(done: list[T | BaseException]) -> list[T]:
    """``done`` (from ``outcomes``) if no task failed; else raise the first failure, in task order."""
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return done  # type: ignore[return-value]


def outcomes(spark: SparkSession, tasks: list[Callable[[], T]], workers: int) -> list[T | BaseException]:
    """Run ``tasks`` in up to ``workers`` threads, each task's Spark jobs in the caller's job group and
    description (pyspark's ``inheritable_thread_target``) and with the caller's context (the stage that
    logs name); returns, in task order, each one's result or the exception it raised.

    Independent tables of a stage go through here: on a small batch a table's cost is the driver's
    planning and scheduling of its few dozen jobs, which the other tables' jobs overlap.
    """

    def settled(task: Callable[[], T]) -> Callable[[], T | BaseException]:
        def run() -> T | BaseException:
            try:
                return task()
            except Exception as exc:  # handed back: the caller decides, once every task has ended
                return exc

        return run

    if workers <= 1 or len(tasks) <= 1:
        return [settled(task)() for task in tasks]

    def carried(task: Callable[[], T | BaseException]) -> Callable[[], T | BaseException]:
        context = contextvars.copy_context()
        if not is_remote(spark):
            return inheritable_thread_target(spark)(lambda: context.run(task))
        tags = spark.getTags()  # Spark Connect: the stage's group is a tag, kept per thread

        def tagged() -> T | BaseException:
            for tag in tags:
                spark.addTag(tag)
            try:
                return context.run(task)
            finally:
                spark.clearTags()

        return tagged

    with ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="microseg") as pool:
        futures = [pool.submit(carried(settled(task))) for task in tasks]
        wait(futures)
    return [future.result() for future in futures]
