"""Retries of MLflow operations: transient failures are tried again (logged), others raise at once."""

import logging

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from microseg.segmentation import registry


def failing(times: int, exc: Exception):
    calls = []

    def operation(value: int) -> int:
        calls.append(value)
        if len(calls) <= times:
            raise exc
        return value * 2

    return operation, calls


def test_a_transient_failure_is_retried_and_logged(caplog, monkeypatch):
    monkeypatch.setitem(registry._retry_policy, "max_wait", 0.01)
    operation, calls = failing(2, MlflowException("server restarting", error_code=TEMPORARILY_UNAVAILABLE))
    with caplog.at_level(logging.WARNING, logger="microseg.segmentation.registry"):
        assert registry.retried(operation)(21) == 42
    assert len(calls) == 3
    retries = [r.getMessage() for r in caplog.records if "try " in r.getMessage()]
    assert len(retries) == 2
    assert "MLflow operation failed (MlflowException: server restarting); try 2 of 5" in retries[0]


def test_a_lost_connection_is_transient_a_missing_model_is_not(monkeypatch):
    monkeypatch.setitem(registry._retry_policy, "max_wait", 0.01)
    operation, calls = failing(1, requests.exceptions.ConnectionError("refused"))
    assert registry.retried(operation)(1) == 2 and len(calls) == 2
    operation, calls = failing(1, MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST))
    with pytest.raises(MlflowException, match="no such model"):
        registry.retried(operation)(1)
    assert len(calls) == 1


def test_retries_stop_after_the_configured_attempts(monkeypatch):
    monkeypatch.setitem(registry._retry_policy, "max_wait", 0.01)
    monkeypatch.setitem(registry._retry_policy, "attempts", 3)
    operation, calls = failing(10, MlflowException("down", error_code=TEMPORARILY_UNAVAILABLE))
    with pytest.raises(MlflowException, match="down"):
        registry.retried(operation)(1)
    assert len(calls) == 3
