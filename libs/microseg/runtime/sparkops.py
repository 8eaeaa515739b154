"""Spark plumbing every stage shares: caches released in ``finally``, and jobs that say what they serve.

Every Spark job of a stage runs in the job group ``microseg-<run id>-<stage>``, with a description
that names the stage and, where it helps, the layer and macro segment; the Spark UI and the
event log show it, and ``jobs_in_group`` counts the jobs a stage ran (the benchmark prints it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession


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
    """Run the block's Spark jobs in ``group`` with ``description``; restore the caller's group after."""
    context = spark.sparkContext
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
    """Jobs of the block carry ``description`` (within the current group); the previous one comes back after."""
    context = spark.sparkContext
    before = context.getLocalProperty("spark.job.description")
    context.setJobDescription(description)
    try:
        yield
    finally:
        context.setLocalProperty("spark.job.description", before)


def jobs_in_group(spark: SparkSession, group: str) -> int:
    """How many Spark jobs ran in ``group`` (as far as the status tracker retains them)."""
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))
