"""Servers the integration tests start as processes of their own on 127.0.0.1: a free port, a start that waits
for the port to open (and says why when the process exits first), a stop that cannot hang."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

# Servers take seconds here and minutes on a busy machine: slow is fine, red is not.
START_TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def serving(
    command: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` until the block ends, once it listens on ``port``; its output goes to ``log``."""
    with open(log, "ab") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if server.poll() is not None:
                raise AssertionError(f"{command[0]} exited with {server.returncode}: {log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{command[0]} did not open port {port} in {timeout} s: {log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield server
    finally:
        stop(server)


def stop(server: subprocess.Popen) -> None:
    """Terminate ``server`` and its children (its own session), then kill what is left after 60 s."""
    import os
    import signal

    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
