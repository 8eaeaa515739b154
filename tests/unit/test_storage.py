"""The storage module on the local file system (the S3 path runs in tests/integration/test_object_storage.py)."""

import os
from pathlib import Path

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
