"""Console logging: one line with time, level, logger and stage; --log-level; MLflow kept to warnings."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from microseg.cli import main
from microseg.runtime import logs

REPO_CONF = str(Path(__file__).resolve().parents[2] / "conf" / "local.yaml")
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<level>\w+) +(?P<logger>\S+) \[(?P<stage>[^\]]+)\] (?P<msg>.*)$")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """configure_logging changes process-wide state: put it back after each test."""
    for name in (
        "MLFLOW_CONFIGURE_LOGGING",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    ):
        monkeypatch.setenv(name, "unset-by-test")
        monkeypatch.delenv(name)
    root = logging.getLogger()
    names = ["microseg", *logs.QUIET_LOGGERS]
    saved = (
        list(root.handlers),
        root.level,
        {n: logging.getLogger(n).level for n in names},
        list(logging.getLogger("mlflow").handlers),
        logging.getLogger("mlflow").propagate,
    )
    monkeypatch.setattr(logs, "_process_stage", None)
    monkeypatch.setattr(logs, "_configured", False)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("mlflow").handlers[:] = saved[3]
    logging.getLogger("mlflow").propagate = saved[4]
    logging.captureWarnings(False)


def lines(text: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m]


def test_a_record_is_one_line_with_level_logger_and_stage(capsys):
    logs.configure_logging("INFO", command="run")
    log = logging.getLogger("microseg.somewhere")
    log.info("before any stage")
    with logs.stage("train"):
        log.info("fitting %d models", 3)
    log.info("after")
    got = [(m["level"], m["logger"], m["stage"], m["msg"]) for m in lines(capsys.readouterr().err)]
    assert got == [
        ("INFO", "microseg.somewhere", "run", "before any stage"),
        ("INFO", "microseg.somewhere", "train", "fitting 3 models"),
        ("INFO", "microseg.somewhere", "run", "after"),
    ]


def test_the_cli_logs_at_info_by_default_and_log_level_warning_hides_info(tmp_path, capsys):
    assert main(["catalog", "--conf", REPO_CONF, "--out", str(tmp_path / "a.md")]) == 0
    shown = lines(capsys.readouterr().err)
    assert [(m["level"], m["logger"], m["stage"]) for m in shown] == [("INFO", "microseg.cli", "catalog")]
    assert shown[0]["msg"].startswith("wrote ") and shown[0]["msg"].endswith(f"to {tmp_path / 'a.md'}")

    assert main(["catalog", "--conf", REPO_CONF, "--out", str(tmp_path / "b.md"), "--log-level", "WARNING"]) == 0
    assert main(["--log-level", "warning", "catalog", "--conf", REPO_CONF, "--out", str(tmp_path / "c.md")]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "b.md").read_text() == (tmp_path / "a.md").read_text()


def test_third_party_info_is_dropped_at_the_default_level_and_their_warnings_kept(capsys):
    logs.configure_logging("INFO")
    mlflow_log = logging.getLogger("mlflow.tracking._model_registry.fluent")
    mlflow_log.info("Registered model 'microseg-value-active'")
    mlflow_log.warning("pip requirements could not be inferred")
    logging.getLogger("py4j.clientserver").info("Closing down clientserver connection")
    gx = logging.getLogger("great_expectations.data_context.types.base")
    gx.setLevel(logging.INFO)  # as Great Expectations does on import
    gx.info("Created temporary directory '/tmp/x' for ephemeral docs site")
    got = [(m["level"], m["logger"], m["msg"]) for m in lines(capsys.readouterr().err)]
    assert got == [("WARNING", "mlflow.tracking._model_registry.fluent", "pip requirements could not be inferred")]


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_what_mlflow_prints_outside_logging_is_an_info_record(capsys, level, shown):
    from mlflow.utils import logging_utils

    stream = logging_utils.MLFLOW_LOGGING_STREAM
    try:
        logs.configure_logging(level)
        logs.quiet_mlflow_prints()  # a second call changes nothing
        logging_utils.eprint("Successfully registered model 'microseg-value-active'.")
        logging_utils.eprint("Created version '1' of model 'microseg-value-active'.")
        err = capsys.readouterr().err
        got = [(m["level"], m["logger"], m["msg"]) for m in lines(err)]
        assert len(got) == len(err.splitlines())  # nothing else reached the console
        assert got == (
            [
                ("INFO", "mlflow.events", "Successfully registered model 'microseg-value-active'."),
                ("INFO", "mlflow.events", "Created version '1' of model 'microseg-value-active'."),
            ]
            if shown
            else []
        )
    finally:
        for name in ("write", "flush"):
            stream.__dict__.pop(name, None)


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match=r"'noisy' is not one of DEBUG, INFO, WARNING, ERROR"):
        logs.configure_logging("noisy")
