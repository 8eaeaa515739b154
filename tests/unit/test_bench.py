"""The daily benchmark's table: seconds and jobs per stage side by side, ratios to the first run."""

import datetime as dt

from microseg.runtime.runlog import RunContext, StageReport
from microseg.runtime.runner import PipelineResult
from microseg.synthetic.bench import comparison_table


def result(figures: dict[str, tuple[float, int | None]]) -> PipelineResult:
    run = PipelineResult(RunContext(as_of=dt.date(2025, 12, 31)))
    for stage, (seconds, jobs) in figures.items():
        report = StageReport(stage)
        report.seconds, report.jobs = seconds, jobs
        run.reports.append(report)
    return run


def test_comparison_table_sums_groups_and_divides_by_the_first_run():
    first = result({"ingest": (40.0, 30), "clean": (100.0, 50), "quality": (60.0, 20), "train": (300.0, 9)})
    refresh = result({"ingest": (10.0, 12), "clean": (90.0, 50), "quality": (50.0, 20), "train": (150.0, 9)})
    rerun = result({"ingest": (4.0, 2), "clean": (80.0, None), "quality": (16.0, 20), "train": (30.0, 9)})
    lines = comparison_table({"first": first, "refresh": refresh, "rerun": rerun})
    head = "stage first s jobs refresh s jobs refresh/first rerun s jobs rerun/first"
    assert lines[0].split() == head.split()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["ingest"] == ["40.0", "30", "10.0", "12", "0.25", "4.0", "2", "0.10"]
    assert rows["clean"] == ["100.0", "50", "90.0", "50", "0.90", "80.0", "-", "0.80"]  # jobs not counted: -
    # ingest+clean+quality: 200 s first, 150 s refresh (0.75), 100 s rerun (0.50)
    assert rows["ingest+clean+quality"] == ["200.0", "100", "150.0", "82", "0.75", "100.0", "-", "0.50"]
    assert rows["total"] == ["500.0", "109", "300.0", "91", "0.60", "130.0", "-", "0.26"]
