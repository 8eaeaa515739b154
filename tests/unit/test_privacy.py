import hashlib
import hmac

import pytest
from pyspark.sql import functions as F

from microseg.errors import HashKeyMissingError
from microseg.privacy import hash_key, hmac_sha256


@pytest.mark.parametrize("key", [b"short-key-0123456789", b"k" * 100])
def test_hmac_matches_python_hmac(spark, key):
    values = ["anna.smith.0@example.com", "", "ünïcode@exämple.com"]
    df = spark.createDataFrame([(v,) for v in values] + [(None,)], "v STRING")
    got = dict(df.select("v", hmac_sha256(F.col("v"), key).alias("h")).collect())
    for v in values:
        assert got[v] == hmac.new(key, v.encode(), hashlib.sha256).hexdigest()
    assert got[None] is None


def test_missing_key_says_how_to_set_it(make_config, monkeypatch):
    cfg = make_config()
    monkeypatch.delenv("MICROSEG_HASH_KEY", raising=False)
    with pytest.raises(HashKeyMissingError) as err:
        hash_key(cfg)
    assert "export MICROSEG_HASH_KEY=" in str(err.value)
