import hashlib
import hmac

import pytest
from pyspark.sql import functions as F

from microseg.runtime.errors import HashKeyMissingError
from microseg.runtime.keys import hash_key, hmac_sha256


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


def test_tokenise_hashes_normalised_identifiers_and_drops_names(spark):
    from microseg.ingest.privacy import tokenise

    key = b"unit-test-key-0123456789"
    df = spark.createDataFrame(
        [
            ("  ANNA.Smith@Example.com ", "+44 (0)20 7946-0001", "Anna", None),
            ("anna.smith@example.com", "020 7946 0001", "Anna", None),
            ("not-an-email", "12", "Ben", None),
            (None, None, None, "#garbled,anna@example.com#"),
        ],
        "email STRING, phone STRING, first_name STRING, _corrupt_record STRING",
    )
    rows = tokenise(df, {"email": "email", "phone": "phone", "first_name": "first_name"}, key, "GB").collect()
    assert set(rows[0].asDict()) == {"email_hash", "email_valid", "phone_hash", "phone_valid", "_corrupt_record"}
    expected_email = hmac.new(key, b"anna.smith@example.com", hashlib.sha256).hexdigest()
    expected_phone = hmac.new(key, b"+442079460001", hashlib.sha256).hexdigest()
    assert [(r["email_hash"], r["email_valid"]) for r in rows[:2]] == [(expected_email, True)] * 2
    assert [(r["phone_hash"], r["phone_valid"]) for r in rows[:2]] == [(expected_phone, True)] * 2
    assert (rows[2]["email_hash"], rows[2]["email_valid"], rows[2]["phone_hash"], rows[2]["phone_valid"]) == (
        None,
        False,
        None,
        False,
    )
    assert (rows[3]["email_valid"], rows[3]["phone_valid"]) == (None, None)
    line = b"#garbled,anna@example.com#"
    assert rows[3]["_corrupt_record"] == "hmac:" + hmac.new(key, line, hashlib.sha256).hexdigest()


def test_contact_records_keep_latest_per_customer(spark):
    import datetime as dt

    from microseg.ingest.privacy import contact_records

    df = spark.createDataFrame(
        [
            ("C1", " Anna ", "ANNA@EXAMPLE.COM", "+44 20 7946 0001", dt.datetime(2024, 1, 1)),
            ("C1", "Anna", "anna.new@example.com", "+44 20 7946 0002", dt.datetime(2024, 6, 1)),
            ("C2", "\uff22\uff45\uff4e", "bad email", None, dt.datetime(2024, 1, 1)),  # full-width "Ben"
        ],
        "ref STRING, first STRING, mail STRING, tel STRING, changed TIMESTAMP",
    )
    pii = {"first": "first_name", "mail": "email", "tel": "phone"}
    got = {r["first_name"]: r for r in contact_records(df, pii, "ref", "changed", "GB").collect()}
    assert set(got) == {"Anna", "Ben"}  # full-width letters NFKC-normalised
    assert (got["Anna"]["email"], got["Anna"]["phone"]) == ("anna.new@example.com", "+442079460002")
    assert got["Ben"]["email"] is None and got["Ben"]["last_name"] is None
