"""A throwaway Spark standalone cluster (one master, one worker) on 127.0.0.1, run from the pyspark package."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
MASTER = "org.apache.spark.deploy.master.Master"
WORKER = "org.apache.spark.deploy.worker.Worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_env(**extra: str) -> dict[str, str]:
    """This process's environment for Spark's scripts, minus what would point them at another Spark or Python."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    return {**env, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"({path} missing)"


def start_logged(cmd: list[str], log: Path, **kwargs: object) -> subprocess.Popen:
    """Start ``cmd`` in a process group of its own, its output going to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for ``proc``; past ``timeout`` kill its group (spark-submit and its Python driver) and return -9."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9


def run_logged(cmd: list[str], log: Path, timeout: float, **kwargs: object) -> int:
    return finish(start_logged(cmd, log, **kwargs), timeout)


class StandaloneCluster:
    """Master and worker started with ``$SPARK_HOME/sbin/spark-daemon.sh``; ``stop()`` is safe to call always."""

    def __init__(self, root: Path, cores: int = 2, memory: str = "2g") -> None:
        self.root, self.cores, self.memory = root, cores, memory
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.logs, self.pids, self.work = root / "logs", root / "pids", root / "work"
        self.env = spark_env(SPARK_LOG_DIR=str(self.logs), SPARK_PID_DIR=str(self.pids), SPARK_IDENT_STRING="test")
        for name in ("PYTHONPATH", "VIRTUAL_ENV"):  # as on another machine: executors see only the shipped env
            self.env.pop(name, None)
        daemon = SPARK_HOME / "sbin" / "spark-daemon.sh"
        assert os.access(daemon, os.X_OK), f"{daemon} is missing or not executable in this pyspark package"
        self.daemon = str(daemon)

    def start(self, timeout: float = 90) -> None:
        self._daemon("start", MASTER, "--host", "127.0.0.1", "--port", self.port, "--webui-port", self.ui_port)
        self._wait(lambda s: s.get("status") == "ALIVE", "master ALIVE", timeout)
        self._daemon(
            "start", WORKER, "--host", "127.0.0.1", "--port", free_port(), "--webui-port", free_port(),
            "--cores", self.cores, "--memory", self.memory, "--work-dir", self.work, self.url,
        )  # fmt: skip
        self._wait(lambda s: any(w["state"] == "ALIVE" for w in s.get("workers", [])), "an ALIVE worker", timeout)

    def stop(self) -> None:
        """Stop the worker, then the master; SIGKILL by pid what has not exited after 20 s."""
        for cls in (WORKER, MASTER):
            pid_file = self.pids / f"spark-test-{cls}-1.pid"
            if not pid_file.exists():
                continue
            pid = int(pid_file.read_text().strip())
            subprocess.run([self.daemon, "stop", cls, "1"], env=self.env, capture_output=True, check=False)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            pid_file.unlink(missing_ok=True)

    def state(self) -> dict:
        """The master's JSON status: workers, activeapps, completedapps, ..."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=30) as response:
            return json.load(response)

    def executors(self) -> dict[tuple[str, str], int]:
        """(app id, executor id) -> pid of each executor JVM this cluster's worker runs now.

        Found in /proc: a CoarseGrainedExecutorBackend process whose working directory is in this worker's
        work dir (``<work>/<app id>/<executor id>``), so never another cluster's executors, also when several
        clusters on the machine have given their applications the same id.
        """
        work = self.work.resolve()
        return {
            (cwd.parent.name, cwd.name): pid
            for pid, args, cwd in processes()
            if "org.apache.spark.executor.CoarseGrainedExecutorBackend" in args and cwd.parent.parent == work
        }

    def kill_executor(self, app_id: str, executor_id: str) -> int:
        """SIGKILL the JVM of one executor of this cluster (see ``executors``); returns its pid."""
        pid = self.executors().get((app_id, executor_id))
        if pid is None:
            raise LookupError(f"no executor {executor_id} of {app_id} runs in {self.work}: {self.executors()}")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 30, f"executor {executor_id} (pid {pid}) to exit after SIGKILL")
        return pid

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{tail(p, 20)}" for p in sorted(self.logs.glob("*.out")))

    def _daemon(self, action: str, cls: str, *args: object) -> None:
        cmd = [self.daemon, action, cls, "1", *map(str, args)]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or "failed to launch" in done.stdout:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}\n{self.log_tails()}")

    def _wait(self, ready: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready(self.state()):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"no {what} at {self.url} after {timeout:.0f}s\n{self.log_tails()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent (spark-daemon's nohup, gone) would reap it
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def processes() -> list[tuple[int, list[str], Path]]:
    """(pid, command line, working directory) of every live process this user may inspect."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if _alive(int(proc.name)):
            found.append((int(proc.name), args, cwd))
    return found


def wait_until(ready: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``ready()`` until it returns something true and return that; TimeoutError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = ready()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def event_log(folder: Path, app_id: str) -> list[dict]:
    """The events of one application's Spark event log (``spark.eventLog.dir`` = ``folder``, uncompressed and
    not rolled: ``spark.eventLog.compress=false``, ``spark.eventLog.rolling.enabled=false``)."""
    path = folder / app_id
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def java_available() -> bool:
    """Spark standalone needs Java: on PATH or under JAVA_HOME."""
    return shutil.which("java") is not None or Path(os.environ.get("JAVA_HOME", "/nonexistent"), "bin", "java").exists()


@dataclass
class Step:
    """One step of a background run: seconds taken, and for a command its log, limit and exit code
    (-9: killed at its limit)."""

    name: str
    seconds: float | None = None
    log: Path | None = None
    timeout: float | None = None
    code: int | None = None

    def describe(self) -> str:
        killed = f", killed at its {self.timeout:.0f} s limit" if self.code == -9 else ""
        head = f"{self.name}: exit {self.code}{killed} after {self.seconds or 0:.0f} s"
        return f"{head}; {self.log}:\n{tail(self.log, 80)}" if self.log else head


class BackgroundRun:
    """Steps run one after another in a thread of their own, while the tests go on.

    ``add(name, work)`` queues ``work(step)``; ``wait(name, timeout)`` blocks until that step is over and
    returns its ``Step``, or raises what ``work`` raised. ``command(step, cmd, log, timeout)`` runs a
    command for a step (``during=`` acts on it while it runs). ``stop()`` kills the process group of the
    command running now (one this object started) and waits for the thread; steps not begun by then fail.
    """

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}
        self._queue: list[tuple[Step, Callable[[Step], None]]] = []
        self._errors: dict[str, Exception] = {}
        self._done: dict[str, threading.Event] = {}
        self._current: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="microseg-background-run", daemon=True)

    def add(self, name: str, work: Callable[[Step], None]) -> None:
        step = self.steps[name] = Step(name)
        self._queue.append((step, work))
        self._done[name] = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def command(
        self,
        step: Step,
        cmd: list[str],
        log: Path,
        timeout: float,
        during: Callable[[subprocess.Popen], None] | None = None,
        **kwargs: object,
    ) -> None:
        """Run ``cmd`` for ``step``; ``during(process)``, if given, runs while it does (if it raises, the
        command's process group is killed and the error goes to the step)."""
        step.log, step.timeout = log, timeout
        self._current = proc = start_logged(cmd, log, **kwargs)
        try:
            if during is not None:
                during(proc)
            step.code = finish(proc, 0 if self._stopping.is_set() else timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self._current = None

    def wait(self, name: str, timeout: float) -> Step:
        if not self._done[name].wait(timeout):
            raise TimeoutError(f"background step {name} still running after the test waited {timeout:.0f} s")
        if name in self._errors:
            raise RuntimeError(f"background step {name} failed: {self._errors[name]}") from self._errors[name]
        return self.steps[name]

    def stop(self, timeout: float = 60) -> None:
        self._stopping.set()
        proc = self._current
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def timings(self) -> str:
        return ", ".join(f"{s.name} {s.seconds:.0f} s" for s in self.steps.values() if s.seconds is not None)

    def _work(self) -> None:
        for step, work in self._queue:
            started = time.monotonic()
            try:
                if self._stopping.is_set():
                    raise RuntimeError("the test session ended before this step began")
                work(step)
            except Exception as exc:  # handed to the test that waits for this step
                self._errors[step.name] = exc
            finally:
                step.seconds = time.monotonic() - started
                self._done[step.name].set()
