"""What a stage compares to tell that nothing it reads changed: row fingerprints, config digests, the
champions' lineage (read fail-closed), and the --retrain flag. The stages' skips themselves are tested in
tests/integration/test_skip_unchanged.py."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from microseg.runtime import provenance
from microseg.runtime.config import ProfileConfig
from microseg.segmentation import registry

SCHEMA = "id STRING, n INT, x DOUBLE, tags MAP<STRING, STRING>"
ROWS = [("a", 1, 0.5, {"k": "v", "j": "w"}), ("b", None, 2.0, None), ("c", 3, None, {})]


def test_a_fingerprint_is_of_the_rows_whatever_their_order_or_partitions(spark):
    one = spark.createDataFrame(ROWS, SCHEMA)
    shuffled = spark.createDataFrame(list(reversed(ROWS)), SCHEMA).repartition(3)
    fingerprint = provenance.rows_fingerprint(one)
    assert re.fullmatch(r"3:[0-9a-f]{16}", fingerprint)
    assert provenance.rows_fingerprint(shuffled) == fingerprint
    # A map's entries in another order are the same map.
    reordered = [("a", 1, 0.5, {"j": "w", "k": "v"}), *ROWS[1:]]
    assert provenance.rows_fingerprint(spark.createDataFrame(reordered, SCHEMA)) == fingerprint


@pytest.mark.parametrize(
    "changed",
    [
        [("a", 1, 0.5, {"k": "v", "j": "w"}), ("b", None, 2.0, None)],  # a row removed
        [*ROWS, ROWS[0]],  # a row twice
        [("a", 1, 0.5, {"k": "v", "j": "x"}), *ROWS[1:]],  # a map value
        [("a", 2, 0.5, {"k": "v", "j": "w"}), *ROWS[1:]],  # a number
        [ROWS[0], ("b", 2, None, None), ROWS[2]],  # (null, 2.0) -> (2, null): Spark's hashes skip nulls
        [ROWS[0], ("b", None, 2.0, {}), ROWS[2]],  # a null map -> an empty one
    ],
)
def test_any_changed_row_changes_the_fingerprint(spark, changed):
    assert provenance.rows_fingerprint(spark.createDataFrame(changed, SCHEMA)) != provenance.rows_fingerprint(
        spark.createDataFrame(ROWS, SCHEMA)
    )


def test_an_empty_frame_has_a_fingerprint(spark):
    assert provenance.rows_fingerprint(spark.createDataFrame([], SCHEMA)) == "0:" + "0" * 16


def test_a_table_state_changes_with_each_commit_and_with_a_table_made_again(spark, make_config):
    import shutil

    from microseg.runtime import lake, tables

    cfg = make_config()
    assert provenance.table_state(spark, cfg, lake.SURVEY_RESPONSES) is None
    rows = spark.createDataFrame([{"response_id": "r1", "customer_id": "c1", "nps": 9}], lake.SURVEY_RESPONSES.ddl)
    tables.overwrite(rows, cfg, lake.SURVEY_RESPONSES)
    first = provenance.table_state(spark, cfg, lake.SURVEY_RESPONSES)
    assert first == provenance.table_state(spark, cfg, lake.SURVEY_RESPONSES)
    assert first.startswith("v1 ")  # the creating write, then its COMMENT
    tables.overwrite(rows, cfg, lake.SURVEY_RESPONSES)
    assert provenance.table_state(spark, cfg, lake.SURVEY_RESPONSES).startswith("v2 ")
    # Dropped and written again: the same version number, another table.
    shutil.rmtree(tables.table_path(cfg, lake.SURVEY_RESPONSES))
    tables.overwrite(rows, cfg, lake.SURVEY_RESPONSES)
    again = provenance.table_state(spark, cfg, lake.SURVEY_RESPONSES)
    assert again.startswith("v1 ") and again != first


def test_a_digest_reads_config_sections_by_value():
    section = ProfileConfig(k_anonymity=10)
    assert provenance.digest({"profile": section, "x": 1}) == provenance.digest({"x": 1, "profile": section})
    assert provenance.digest({"profile": section}) == provenance.digest({"profile": section.model_dump(mode="json")})
    assert provenance.digest({"profile": section}) != provenance.digest({"profile": ProfileConfig(k_anonymity=11)})
    assert re.fullmatch(r"[0-9a-f]{16}", provenance.code_version())


def test_the_first_difference_between_two_fingerprints_is_named():
    from microseg.runtime.runlog import difference

    before = {"silver": {"customers": "v1 a", "orders": "v1 b"}, "code": "c1", "previous": None}
    assert difference(before, dict(before), "inputs") is None
    after = {**before, "silver": {"customers": "v1 a", "orders": "v2 b"}, "code": "c2"}
    assert difference(before, after, "inputs") == "inputs.code: c1 -> c2"  # keys in order: code before silver
    assert difference(before, {**after, "code": "c1"}, "inputs") == "inputs.silver.orders: v1 b -> v2 b"
    assert difference(None, before, "inputs").startswith("inputs: None -> {")


LINEAGE = {"lineage.as_of": "2025-06-30", "lineage.features": "3:00ff", "lineage.features_version": "4"}
COMPARED = ["lineage.as_of", "lineage.features"]


def registry_answering(monkeypatch, answer):
    """The registry client as ``champions_lineage`` sees it: get_model_version_by_alias calls ``answer(name)``."""
    calls = []

    def by_alias(name, alias):
        calls.append(name)
        return answer(name)

    monkeypatch.setattr(registry, "client", lambda cfg: SimpleNamespace(get_model_version_by_alias=by_alias))
    monkeypatch.setitem(registry._retry_policy, "max_wait", 0.01)
    monkeypatch.setitem(registry._retry_policy, "attempts", 3)
    return calls


def version(number, **tags):
    return SimpleNamespace(version=number, run_id=f"run{number}", tags=tags)


def test_champions_with_this_lineage_are_found(monkeypatch):
    recorded = {**LINEAGE, "lineage.features_version": "3"}  # another table version: shown, not compared
    registry_answering(monkeypatch, lambda name: version(7, **recorded))
    found = registry.champions_lineage(None, ["m1", "m2"], LINEAGE, COMPARED)
    assert found.differs is None
    assert found.recorded("lineage.features_version") == ["3"]


def test_a_champion_with_other_inputs_or_none_at_all_means_training(monkeypatch):
    other = {**LINEAGE, "lineage.features": "3:0100"}
    registry_answering(monkeypatch, lambda name: version(2, **(LINEAGE if name == "m1" else other)))
    found = registry.champions_lineage(None, ["m1", "m2"], LINEAGE, COMPARED)
    assert found.differs == "m2's champion v2 has lineage.features 3:0100, now 3:00ff"

    def missing(name):
        raise MlflowException("no alias", error_code=RESOURCE_DOES_NOT_EXIST)

    registry_answering(monkeypatch, missing)
    assert registry.champions_lineage(None, ["m1"], LINEAGE, COMPARED).differs == "m1 has no champion"
    registry_answering(monkeypatch, lambda name: version(1))  # trained before lineage tags existed
    assert registry.champions_lineage(None, ["m1"], LINEAGE, COMPARED).differs == (
        "m1's champion v1 has lineage.as_of (none), now 2025-06-30"
    )


def test_an_unreachable_registry_stops_the_stage_after_retries(monkeypatch):
    """Neither a skip nor a retrain on a registry that does not answer: the error, after the retries."""

    def down(name):
        raise requests.exceptions.ConnectionError("connection refused")

    calls = registry_answering(monkeypatch, down)
    with pytest.raises(requests.exceptions.ConnectionError):
        registry.champions_lineage(None, ["m1", "m2"], LINEAGE, COMPARED)
    assert calls == ["m1"] * 3


@pytest.mark.parametrize(
    ("argv", "retrain", "rerun"),
    [
        (["run"], False, False),
        (["run", "--retrain"], True, False),
        (["train"], False, False),
        (["train", "--retrain"], True, False),
        (["train", "--force"], True, False),
        (["train", "--rerun"], False, True),
    ],
)
def test_retrain_reaches_the_run(monkeypatch, argv, retrain, rerun):
    from microseg import cli

    seen = {}

    def fake_run(cfg, args):
        seen.update(retrain=args.retrain, rerun=args.rerun)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "run", fake_run)
    monkeypatch.setattr(cli, "cmd_run", fake_run)
    assert cli.main([*argv, "--conf", str(Path(__file__).parents[2] / "conf" / "local.yaml")]) == 0
    assert seen == {"retrain": retrain, "rerun": rerun}
