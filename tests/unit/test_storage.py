"""The storage module on the local file system (the S3 path runs in tests/integration/test_object_storage.py)."""

import os
from pathlib import Path

import pytest

from microseg.runtime import storage
from microseg.runtime.loader import load_config

REPO = Path(__file__).resolve().parents[2]


def test_writes_lists_and_copies_local_files(tmp_path):
    root = tmp_path / "lake"
    uri = storage.write_text(None, f"{root}/reports/a.html", "<p>é</p>")
    assert uri == f"{root}/reports/a.html"
    assert (root / "reports" / "a.html").read_text(encoding="utf-8") == "<p>é</p>"
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "index.html").write_text("i")
    (tmp_path / "docs" / "sub" / "page.html").write_text("p")
    storage.put_folder(None, tmp_path / "docs", f"{root}/ops/data_docs")
    assert (root / "ops" / "data_docs" / "sub" / "page.html").read_text() == "p"
    assert storage.folders(None, str(root)) == ["ops", "reports"]
    assert storage.folders(None, f"{root}/missing") == []


def test_move_files_names_them_by_prefix_and_never_replaces_one(tmp_path):
    staging, target = tmp_path / "staging", tmp_path / "orders"
    staging.mkdir()
    target.mkdir()
    for name in ("part-00001-x-c000.snappy.parquet", "part-00000-y-c000.snappy.parquet", "_SUCCESS", ".p.crc"):
        (staging / name).write_text(name)
    (target / "old.parquet").write_text("old")
    moved = storage.move_files(None, str(staging), str(target), "2026-01-01-")
    assert moved == [f"{target}/2026-01-01-00.snappy.parquet", f"{target}/2026-01-01-01.snappy.parquet"]
    assert (target / "2026-01-01-00.snappy.parquet").read_text() == "part-00000-y-c000.snappy.parquet"
    assert sorted(p.name for p in target.iterdir()) == [
        "2026-01-01-00.snappy.parquet",
        "2026-01-01-01.snappy.parquet",
        "old.parquet",
    ]
    assert sorted(p.name for p in staging.iterdir()) == [".p.crc", "_SUCCESS"]
    (staging / "part-00000-z.snappy.parquet").write_text("again")
    with pytest.raises(FileExistsError, match="already in"):
        storage.move_files(None, str(staging), str(target), "2026-01-01-")
    assert (staging / "part-00000-z.snappy.parquet").exists()  # nothing moved
    assert storage.read_text(None, str(target / "old.parquet")) == "old"
    storage.remove(None, str(staging))
    storage.remove(None, str(staging))  # gone already: nothing to do
    assert not staging.exists()


def test_list_files_names_files_as_hadoop_does(tmp_path):
    folder = tmp_path / "orders"
    folder.mkdir()
    for name in ("b.csv", "a.csv", "_SUCCESS", ".a.csv.crc", "notes.txt"):
        (folder / name).write_text("x" * len(name))
    found = storage.list_files(None, f"{folder}/*.csv")
    assert [f.path for f in found] == [f"file:{folder}/a.csv", f"file:{folder}/b.csv"]
    assert found[0].size == len("a.csv")
    assert found[0].modified_ms == os.stat(folder / "a.csv").st_mtime_ns // 1_000_000
    # A folder stands for the files in it; hidden and underscore files are left out.
    assert [f.path.rsplit("/", 1)[1] for f in storage.list_files(None, str(folder))] == ["a.csv", "b.csv", "notes.txt"]
    assert storage.list_files(None, f"{tmp_path}/none/*.csv") == []


def test_s3_options_come_from_the_hadoop_settings(tmp_path):
    cfg = load_config(
        REPO / "conf" / "local.yaml",
        [
            "spark.settings.spark.hadoop.fs.s3a.endpoint=http://127.0.0.1:9000",
            "spark.settings.spark.hadoop.fs.s3a.access.key=AK",
            "spark.settings.spark.hadoop.fs.s3a.secret.key=SK",
            "spark.settings.spark.hadoop.fs.s3a.path.style.access='true'",
        ],
    )
    assert storage.options(cfg, "s3a://bucket/lake") == {
        "key": "AK",
        "secret": "SK",
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
    }
    assert storage.options(cfg, "/local/lake") == {}
    assert storage.scheme("s3a://b/k") == "s3a" and storage.scheme("/x") == "file"
