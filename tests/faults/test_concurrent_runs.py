"""Two `microseg run` processes of the same as_of started at once: one runs, the other stops at once with
"a run for this as_of is in progress" (runtime/run_lock.py), and the tables are as one run leaves them."""

from __future__ import annotations

import re
import time

from microseg.runtime import lake, tables
from microseg.synthetic.datagen import SOURCES

STAGES = ["ingest", "clean", "quality"]
TIMEOUT = 900  # seconds; slow is fine, red is not


def test_two_runs_of_one_as_of_one_runs_the_other_is_refused(spark, make_config, fault_data, microseg_process,
                                                             tmp_path):  # fmt: skip
    data, manifest = fault_data
    as_of = manifest["end_date"]
    lake_root = tmp_path / "lake"
    # No metastore: the embedded one (Derby) admits one process at a time, whatever the as_of.
    sets = [f"lake.root={lake_root}", f"sources.root={data}", "tables.metastore=none"]
    args = ["run", "--as-of", str(as_of), *[a for s in STAGES for a in ("--stage", s)], *[f"--set={s}" for s in sets]]
    started = time.perf_counter()
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes = [microseg_process(*args, log=log) for log in logs]
    codes = [p.wait(timeout=TIMEOUT) for p in processes]
    seconds = time.perf_counter() - started
    outputs = [log.read_text() for log in logs]
    print(f"two runs at once: {seconds:.0f}s, exit codes {codes}")

    assert sorted(codes) == [0, 1], "\n\n".join(o[-4000:] for o in outputs)
    ran, refused = (outputs[0], outputs[1]) if codes[0] == 0 else (outputs[1], outputs[0])
    winner = re.search(r"microseg run (\w+): as_of", ran).group(1)
    assert "[3/3] quality done" in ran
    # The refusal names the holder and says what to do, as one line from the CLI, not a traceback.
    assert f"RunInProgressError: a run for this as_of is in progress: run {winner} (stages ingest, clean, quality)" \
        in refused  # fmt: skip
    assert "lease until" in refused and "If that run is dead" in refused
    assert "Traceback" not in refused and "[1/3] ingest started" not in refused

    cfg = make_config(*sets, lake=lake_root)
    # Bronze holds each generated row once (ingested by one run), silver no key twice.
    for source in SOURCES:
        assert tables.read(spark, cfg, lake.bronze(source)).count() == manifest["rows"][source], source
    for table in (t for t in lake.TABLES if t.layer == "silver" and tables.exists(spark, cfg, t)):
        frame = tables.read(spark, cfg, table)
        assert frame.count() == frame.select(*table.keys).distinct().count() > 0, table.name
    # Only the winner logged stages; its lock is gone.
    log = tables.read(spark, cfg, lake.RUN_LOG).select("run_id", "stage", "status").distinct().collect()
    assert sorted((r["run_id"], r["stage"], r["status"]) for r in log) == sorted((winner, s, "ok") for s in STAGES)
    assert tables.read(spark, cfg, lake.RUN_LOCKS).count() == 0
