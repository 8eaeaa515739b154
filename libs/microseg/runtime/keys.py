"""Keys: the HMAC key from the environment, keyed hashing of identifiers, and the deterministic customer id."""

from __future__ import annotations

import hashlib
import os

from pyspark.sql import Column
from pyspark.sql import functions as F

from microseg.runtime.config import Config
from microseg.runtime.errors import HashKeyMissingError

_BLOCK = 64


def hash_key(cfg: Config) -> bytes:
    """The HMAC key from the environment variable named by ``privacy.hash_key_env``."""
    name = cfg.privacy.hash_key_env
    value = os.environ.get(name, "")
    if len(value) < 16:
        raise HashKeyMissingError(
            f"environment variable {name} must hold the HMAC key for hashing emails and phones "
            f"(at least 16 characters); set it from your secret store, for example "
            f"export {name}=$(python -c 'import secrets; print(secrets.token_hex(32))'). "
            f"Keep the same key across runs, or hashes (and identity links) will change."
        )
    return value.encode()


def hmac_sha256(value: Column, key: bytes) -> Column:
    """HMAC-SHA256 of ``value`` (a string column) as lowercase hex, equal to Python's ``hmac``.

    Spark has no HMAC function; RFC 2104 is built from sha2 and binary concat so that
    no Python UDF is needed. Null stays null.
    """
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner_pad = bytes(b ^ 0x36 for b in key).hex()
    outer_pad = bytes(b ^ 0x5C for b in key).hex()
    inner = F.unhex(F.sha2(F.concat(F.unhex(F.lit(inner_pad)), value.cast("binary")), 256))
    return F.sha2(F.concat(F.unhex(F.lit(outer_pad)), inner), 256)


def customer_id_from_crm(crm_id: Column) -> Column:
    """A stable surrogate customer id derived from the CRM id (the same CRM id always maps to it)."""
    return F.concat(F.lit("cu_"), F.substring(F.sha2(F.concat(F.lit("crm:"), crm_id), 256), 1, 20))
