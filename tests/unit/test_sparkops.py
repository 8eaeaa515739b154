"""sparkops: caches released when the block ends (only those the block made), and tasks run side by side."""

import pytest
from pyspark import StorageLevel

from microseg.runtime.sparkops import cached


def test_cached_releases_its_cache_also_on_an_error(spark):
    df = spark.range(7)
    with pytest.raises(RuntimeError), cached(df) as kept:
        assert kept.storageLevel != StorageLevel.NONE
        raise RuntimeError("boom")
    assert df.storageLevel == StorageLevel.NONE


def test_cached_leaves_a_cache_of_the_same_plan_to_its_owner(spark):
    outer = spark.range(5)
    with cached(outer):
        with cached(spark.range(5)) as inner:  # the same plan: Spark shares one cache entry
            assert inner.count() == 5
        assert outer.storageLevel != StorageLevel.NONE
    assert outer.storageLevel == StorageLevel.NONE


def test_tasks_side_by_side_run_in_the_caller_s_job_group_and_context_and_fail_in_order(spark):
    import contextvars
    import threading

    from microseg.runtime.sparkops import in_parallel, job_group, jobs_in_group, outcomes

    stage = contextvars.ContextVar("stage", default=None)
    stage.set("clean")
    threads, started = set(), threading.Barrier(3, timeout=60)

    def task(n: int):
        def run() -> tuple[int, str | None, str | None]:
            threads.add(threading.get_ident())
            started.wait()  # the three are under way at once
            group = spark.sparkContext.getLocalProperty("spark.jobGroup.id")
            return spark.range(n).count(), group, stage.get()

        return run

    with job_group(spark, "microseg-test-parallel", "side by side"):
        results = in_parallel(spark, [task(n) for n in (3, 5, 7)], workers=3)
    assert results == [(3, "microseg-test-parallel", "clean"), (5, "microseg-test-parallel", "clean"),
                       (7, "microseg-test-parallel", "clean")]  # fmt: skip
    assert len(threads) == 3 and threading.get_ident() not in threads
    assert jobs_in_group(spark, "microseg-test-parallel") >= 3  # the threads' jobs count in the caller's group

    ran = []

    def fails(name: str):
        def run() -> None:
            ran.append(name)
            raise ValueError(name)

        return run

    def succeeds() -> str:
        ran.append("ok")
        return "ok"

    with pytest.raises(ValueError, match=r"^first$"):  # the first in task order, once every task has ended
        in_parallel(spark, [succeeds, fails("first"), fails("second")], workers=2)
    assert sorted(ran) == ["first", "ok", "second"]
    done = outcomes(spark, [succeeds, fails("x")], workers=1)  # in turn, the same outcomes
    assert done[0] == "ok" and isinstance(done[1], ValueError)
