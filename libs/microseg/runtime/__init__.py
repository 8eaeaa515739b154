"""Shared runtime, below every stage: config, Spark session, tables, run log, runner, provenance, keys, logging."""
