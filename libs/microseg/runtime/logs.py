"""Console logging: one line per event, with the time, the level, the logger and the pipeline stage.

    2026-11-26 10:00:01 INFO  microseg.runtime.runner [train] [6/8] train done in 41.2s: 37 Spark jobs, ...

``configure_logging`` is called once, by the command-line entry; library modules only ask for
``logging.getLogger(__name__)``. The stage in brackets comes from ``stage()``, which the pipeline
runner enters around each stage (outside one it is the command's name, or ``-``). Third-party
libraries (MLflow, py4j, Great Expectations) keep to warnings and errors, whatever the level.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

FORMAT = "%(asctime)s %(levelname)-5s %(name)s [%(stage)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Their INFO records are per model, per connection or per expectation: chatter, not progress.
QUIET_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "huey", "py4j", "great_expectations", "urllib3")

_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("microseg_stage", default=None)
# Threads a stage starts (thread pools, py4j callbacks) do not inherit the context variable; the
# stage the process is in is their best answer.
_process_stage: str | None = None
_configured = False


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Records logged inside the block carry ``name`` as their stage."""
    global _process_stage
    token, before = _STAGE.set(name), _process_stage
    _process_stage = name
    try:
        yield
    finally:
        _STAGE.reset(token)
        _process_stage = before


def current_stage() -> str:
    return _STAGE.get() or _process_stage or "-"


class StageFilter(logging.Filter):
    """Adds ``record.stage`` (the current stage) to every record that passes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "stage"):
            record.stage = current_stage()
        return True


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (pytest and notebooks replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return number


def configure_logging(level: int | str = "INFO", command: str | None = None) -> logging.Handler:
    """Send log records to stderr, one line each, microseg's at ``level`` and up.

    Third-party loggers (``QUIET_LOGGERS``) pass warnings and errors only (``level`` if higher;
    MLflow's INFO too at ``DEBUG``), also those that set their own level (Great Expectations sets one of its loggers to
    INFO). MLflow is told not to install its own handler (``MLFLOW_CONFIGURE_LOGGING``), not to
    print run URLs nor draw artifact download bars, and what it prints to stderr outside
    ``logging`` comes here as INFO records of ``mlflow.events`` (see ``quiet_mlflow_prints``);
    these variables only change output, and one already set by the user wins. Calling again
    replaces the handler of the previous call; other handlers (pytest's, a notebook's) stay.

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (or a ``logging`` number).
        command: the stage shown in records logged outside a pipeline stage (the CLI's subcommand).

    Returns:
        The console handler it installed.
    """
    global _configured, _process_stage
    number = _level(level)
    quiet = max(number, logging.WARNING)
    # Third parties pass warnings and up; at DEBUG, MLflow's INFO (a line or two per model) too.
    thresholds = {name: quiet for name in QUIET_LOGGERS}
    if number <= logging.DEBUG:
        thresholds["mlflow"] = logging.INFO
    # Read by MLflow when it is first imported, and on each run or download.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(StageFilter())
    handler.addFilter(_ThirdPartyFilter(thresholds))
    handler.set_name("microseg-console")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "microseg-console"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(quiet)
    logging.getLogger("microseg").setLevel(number)
    for name, threshold in thresholds.items():
        logging.getLogger(name).setLevel(threshold)
    if "mlflow" in sys.modules and not _mlflow_logs_itself():
        # Imported before this call, MLflow configured its logger: its handler goes, records come here.
        logging.getLogger("mlflow").handlers = []
        logging.getLogger("mlflow").propagate = True
    logging.captureWarnings(True)
    if command is not None:
        _process_stage = command
    _configured = True
    quiet_mlflow_prints()
    return handler


class _ThirdPartyFilter(logging.Filter):
    """Drops records of third-party loggers (and their children) below their threshold, whatever the
    level their library set on them."""

    def __init__(self, thresholds: dict[str, int]) -> None:
        super().__init__()
        self.thresholds = thresholds

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.thresholds.get(record.name.split(".", 1)[0], logging.NOTSET)


def _mlflow_logs_itself() -> bool:
    return os.environ.get("MLFLOW_CONFIGURE_LOGGING", "true").strip().lower() not in ("false", "0")


def quiet_mlflow_prints() -> None:
    """Turn what MLflow prints to stderr outside ``logging`` (``Successfully registered model``,
    ``Created version ...``) into INFO records of the ``mlflow.events`` logger, dropped at the
    default level.

    MLflow writes those through one stream object, ``mlflow.utils.logging_utils.MLFLOW_LOGGING_STREAM``
    (and its own handler, which ``configure_logging`` keeps off); its ``disable_logging()`` does not
    last, as MLflow's autologging re-enables the stream after each patched call. Lines MLflow's
    silent mode turns off stay off. A no-op unless ``configure_logging`` ran (a library caller keeps
    MLflow as it is), MLflow is imported and does not log by itself; ``tracking.configure`` calls it
    after importing MLflow, and calling it again changes nothing.
    """
    if not _configured or _mlflow_logs_itself() or "mlflow" not in sys.modules:
        return
    from mlflow.utils import logging_utils

    stream = logging_utils.MLFLOW_LOGGING_STREAM
    if not isinstance(stream.__dict__.get("write"), _LinesToLogger):
        stream.write = _LinesToLogger(logging.getLogger("mlflow.events"), lambda: stream.enabled)
        stream.flush = lambda: None


class _LinesToLogger:
    """A ``write`` that logs each complete line at INFO while ``enabled()``."""

    def __init__(self, logger: logging.Logger, enabled: Callable[[], bool]) -> None:
        self.logger, self.enabled, self.pending = logger, enabled, ""

    def __call__(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip() and self.enabled():
                self.logger.info(line)
        return len(text)


SPARK_ERROR_LINES = 8  # of a Spark error's message, before its stack trace
_TRACE_START = ("\tat ", "at ", "JVM stacktrace:", "Driver stacktrace:", "Caused by:", "Traceback ")


def spark_error(exc: BaseException) -> str | None:
    """The meaningful start of an error raised by Spark's JVM: its first lines (the error class and message,
    and the SQL fragment it points at), without the Java stack trace it carries; None for other errors."""
    from py4j.protocol import Py4JError, Py4JJavaError
    from pyspark.errors import PySparkException

    if isinstance(exc, Py4JJavaError):
        text = str(exc.java_exception.toString())
    elif isinstance(exc, (PySparkException, Py4JError)):
        text = str(exc)
    else:
        return None
    lines = []
    for line in text.splitlines():
        if line.strip().startswith(_TRACE_START) or len(lines) == SPARK_ERROR_LINES:
            break
        if line.strip():
            lines.append(line if len(line) <= 1000 else line[:1000] + " ...")
    return "\n".join(lines) or type(exc).__name__
