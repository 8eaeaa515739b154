"""Fault injection for the fault suite (tests/faults): the process kills itself with SIGKILL at a chosen point.

Work that can be interrupted halfway calls ``point(kind)`` before it starts: every Delta write
(``delta``), every write of clean's staging (``staging``), every MLflow registry change (``mlflow``), and
the runner at each stage's end (``stage_end``).
Nothing happens unless ``MICROSEG_KILL_AT`` is set to ``<stage>:<n>:<delay_ms>``: then, in that stage,
the n-th point starts a timer that kills the process ``delay_ms`` later, while the work it announced runs
(0: before it starts); a stage that ends before its n-th point is killed at its end instead.
``MICROSEG_FAULT_TRACE=<file>`` appends one line per point (stage, kind, what) instead, so a test can see
where an uninterrupted run would stop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from microseg.runtime import logs

log = logging.getLogger(__name__)
_hits: dict[str, int] = {}
_counting = threading.Lock()  # sources run side by side (sparkops.in_parallel): their points are counted in turn


def point(kind: str, what: str = "") -> None:
    """A place where the process may be killed (see the module's description); a no-op unless asked."""
    spec, trace = os.environ.get("MICROSEG_KILL_AT"), os.environ.get("MICROSEG_FAULT_TRACE")
    if not spec and not trace:
        return
    stage = logs.current_stage() or "-"
    if trace:
        with _counting, open(trace, "a", encoding="utf-8") as out:
            out.write(f"{stage}\t{kind}\t{what}\n")
    if not spec:
        return
    target, n, delay_ms = spec.split(":")
    if stage != target:
        return
    with _counting:
        hit = _hits[stage] = _hits.get(stage, 0) + 1
    if kind == "stage_end" or hit == int(n):
        _kill_after(int(delay_ms) if kind != "stage_end" else 0, f"{stage} point {hit} {kind} {what}")


def _kill_after(delay_ms: int, where: str) -> None:
    log.warning("fault injection: SIGKILL in %d ms at %s", delay_ms, where)
    for handler in logging.getLogger().handlers:
        handler.flush()

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if delay_ms <= 0:
        kill()
    timer = threading.Timer(delay_ms / 1000, kill)
    timer.daemon = True
    timer.start()
