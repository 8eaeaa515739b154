"""sparkops.cached: caches released when the block ends, and only the caches the block made."""

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
