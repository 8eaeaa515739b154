"""`microseg` CLI processes for the fault tests, and the kill-and-restart chain that runs them in the background.

``start_microseg`` starts the CLI as a scheduler would: a process of its own, leading a process group with its
JVM, on this checkout's package with the tests' settings. ``KillChain`` runs, in a thread started after
collection (tests/faults/conftest.py), the whole chain that test_kill_restart.py checks: generate a small
data set, run it once uninterrupted with a trace of its kill points, then run it again and again in a second
lake, each process killed at the next point of a seeded schedule, until a last run completes. The chain is
a dozen processes, mostly JVM starts and waits, so the rest of the suite runs meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import microseg
from microseg.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
# tests/conftest.py's TEST_SETTINGS as `microseg` takes them (--set), with a small driver: a fault test runs
# several drivers at once.
RUN_SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
    "spark.settings.spark.driver.memory=1g",
    "spark.settings.spark.sql.codegen.wholeStage='false'",
    "spark.settings.spark.sql.codegen.factoryMode='NO_CODEGEN'",
]
TIMEOUT = 1800  # seconds for one process; slow is fine, red is not

# The chain: 100 customers over three months, and the smallest training that still sweeps and registers (one
# model, the value layer's, over everyone).
AS_OF = "2025-12-31"
DATAGEN = ["--customers", "100", "--seed", "3", "--set=datagen.partitions=1", "--set=datagen.start_date=2025-10-01",
           f"--set=datagen.end_date={AS_OF}"]  # fmt: skip
CHAIN_SETTINGS = ("tables.metastore=none", "train.by_macro=false", "train.min_macro_size=20", "train.k_max=3",
                  "train.layers.engagement=null", "train.layers.preference=null")  # fmt: skip
SEED = 20261126
KILLS_PER_STAGE = {
    "ingest": 1,
    "clean": 2,
    "quality": 2,
    "features": 1,
    "value": 1,
    "train": 2,
    "assign": 1,
    "profile": 1,
}


def start_microseg(*args: str, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """`microseg <args>` in a process of its own (a new session: it and its JVM can be signalled together with
    ``os.killpg``), on this checkout's package, the tests' settings and HMAC key, and ``extra_env``; its
    output goes to ``log``."""
    libs = str(Path(microseg.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join([libs, os.environ.get("PYTHONPATH", "")]),
        **(extra_env or {}),
    }
    command = [sys.executable, "-c", "import sys; from microseg.cli import main; sys.exit(main(sys.argv[1:]))",
               args[0], "--conf", str(REPO / "conf" / "local.yaml"), *[f"--set={s}" for s in RUN_SETTINGS],
               *args[1:]]  # fmt: skip
    with open(log, "w") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )


def schedule(trace: list[tuple[str, str, str]], seed: int) -> list[tuple[str, int, int, str]]:
    """(stage, n, delay_ms, what) kill points in stage order, from the reference run's points per stage
    (runtime/faults.py): ``KILLS_PER_STAGE`` of them, one in train on an MLflow registry change, each with
    a delay of 0 (before the work it announces) or 20 to 1500 ms (inside it)."""
    rng = random.Random(seed)
    plan = []
    for stage in STAGES:
        points = [(kind, what) for s, kind, what in trace if s == stage]
        picks = rng.sample(range(1, len(points) + 1), min(KILLS_PER_STAGE[stage], len(points))) if points else []
        if stage == "train":
            registry = [i for i, (kind, _) in enumerate(points, start=1) if kind == "mlflow"]
            picks = sorted({rng.choice(registry), *picks[:1]}) if registry else picks
        for n in sorted(picks) or [1]:  # a stage without points is killed at its end
            kind, what = points[n - 1] if points else ("stage_end", stage)
            plan.append((stage, n, rng.choice([0, rng.randint(20, 1500)]), f"{kind} {what}"))
    return plan


class KillChain:
    """The chain in a thread of its own (``start``); ``result(timeout)`` waits for it and returns where the
    lakes are and what each process of the chain did, or raises what went wrong; ``stop`` kills the process
    running now and ends the chain."""

    def __init__(self, root: Path) -> None:
        self.root, self.data = root, root / "data"
        self.reference, self.chain = root / "reference", root / "chain"
        self.outcomes: list[dict] = []
        self.reference_seconds = 0.0
        self._error: BaseException | None = None
        self._current: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="microseg-kill-chain", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def result(self, timeout: float) -> dict:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the kill chain ({self.root}) still runs after {timeout:.0f} s: {self.outcomes}")
        if self._error is not None:
            raise RuntimeError(f"the kill chain ({self.root}) failed: {self._error}") from self._error
        return {"reference": self.reference, "chain": self.chain, "outcomes": self.outcomes, "logs": self.root}

    def stop(self) -> None:
        self._stopping.set()
        process = self._current
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        self._thread.join(60)

    def _run(self, args: list[str], log: str, **env: str) -> tuple[int, float]:
        if self._stopping.is_set():
            raise RuntimeError("the test session ended before the chain did")
        started = time.perf_counter()
        self._current = process = start_microseg(*args, log=self.root / log, extra_env=env)
        try:
            code = process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            self._current = None
        return code, time.perf_counter() - started

    def _pipeline(self, lake: Path, log: str, **env: str) -> tuple[int, float]:
        settings = [*CHAIN_SETTINGS, f"lake.root={lake}", f"sources.root={self.data}"]
        return self._run(["run", "--as-of", AS_OF, *[f"--set={s}" for s in settings]], log, **env)

    def _outcome(self, log: str, code: int, seconds: float) -> dict:
        """What a process of the chain did: where it was killed, as its log says (threads publish side by side,
        so the n-th point of a restart need not be the reference run's n-th), or the last error line of a
        process that failed."""
        lines = (self.root / log).read_text(errors="replace").splitlines()
        outcome = {"rc": code, "seconds": round(seconds)}
        if code == -signal.SIGKILL:
            outcome["killed"] = next((line.split("SIGKILL ")[-1] for line in lines if "fault injection" in line), "?")
        elif code != 0:
            errors = [line for line in lines if " ERROR " in line]
            outcome["error"] = errors[-1] if errors else self._tail(log)[-500:]
        return outcome

    def _tail(self, log: str) -> str:
        return (self.root / log).read_text(errors="replace")[-5000:]

    def _work(self) -> None:
        try:
            code, _ = self._run(["datagen", *DATAGEN, "--out", str(self.data)], "datagen.log")
            assert code == 0, self._tail("datagen.log")
            trace = self.root / "trace.tsv"
            code, self.reference_seconds = self._pipeline(self.reference, "reference.log",
                                                          MICROSEG_FAULT_TRACE=str(trace))  # fmt: skip
            assert code == 0, self._tail("reference.log")
            points = [tuple(line.split("\t")) for line in trace.read_text().splitlines()]
            for i, (stage, n, delay, what) in enumerate(schedule(points, SEED)):
                kill_at = f"{stage}:{n}:{delay}"
                code, seconds = self._pipeline(self.chain, f"chain-{i:02d}.log", MICROSEG_KILL_AT=kill_at)
                outcome = {"stage": stage, "n": n, "delay_ms": delay, "planned": what}
                self.outcomes.append({**outcome, **self._outcome(f"chain-{i:02d}.log", code, seconds)})
            code, seconds = self._pipeline(self.chain, "final.log")
            self.outcomes.append({"stage": "-", **self._outcome("final.log", code, seconds)})
        except BaseException as exc:  # handed to the test through result()
            self._error = exc
