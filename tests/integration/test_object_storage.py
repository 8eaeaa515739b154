"""The pipeline on object storage with a remote MLflow server, as on a cluster: every process a real one.

- an S3 API on 127.0.0.1 (moto's server), holding the sources, the lake and MLflow's artifacts;
- `mlflow server` (SQLite backend, artifacts served by the server into the S3 bucket), reached through a
  proxy that answers the first two calls that set a registry alias with 503, as a server restarting would;
- generated sources uploaded to the bucket, then `microseg run` in a process of its own with lake.root and
  sources.root on s3a:// (hadoop-aws from Maven Central; the files beside the tables through
  runtime/storage.py).

The checks read what the run wrote with other clients: delta-rs over S3 for the gold tables, boto3 for the
report and the data docs, MLflow's client for the registry. Expected values come from the generated data's
manifest and from other tables read back, never from the code under test.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers import free_port, serving

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET, KEY, SECRET, REGION = "microseg-test", "test-access-key", "test-secret-key", "us-east-1"
AS_OF = dt.date(2025, 12, 31)
ALIAS_CALL = "/api/2.0/mlflow/registered-models/alias"
DROPPED = 2  # MLflow's client retries a 503 once here (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1): microseg sees one
SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
    "datagen.partitions=2",
    "train.by_macro=false",
    "train.layers.engagement=null",
    "train.layers.preference=null",
    "train.layers.value.algorithms=[kmeans]",
    "train.k_min=2",
    "train.k_max=4",
    "train.min_macro_size=100",  # a sweep, on these few customers
    "mlflow.retry_max_wait_seconds=2",
    # tests/conftest.py's CHURN_SETTINGS: a short boosting and baseline
    "value.churn.max_iter=4",
    "value.churn.baseline_max_iter=10",
    "value.churn.max_depth=3",
]
RUN_TIMEOUT = 2400


class DroppingProxy(BaseHTTPRequestHandler):
    """Forwards every request to the MLflow server; answers the first ``DROPPED`` alias calls with 503."""

    target: int
    dropped: list[str]

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b""  # requests sends an empty file's upload chunked
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return body

    def _forward(self) -> None:
        body = self._body()
        if self.path.startswith(ALIAS_CALL) and self.command == "POST" and len(self.dropped) < DROPPED:
            self.dropped.append(self.path)
            self._answer(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "proxy: server restarting"}')
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.target, timeout=600)
        dropped = ("host", "connection", "transfer-encoding", "content-length")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        self._answer(response.status, response.read(), response.getheader("Content-Type"))
        upstream.close()

    def _answer(self, status: int, body: bytes, kind: str | None = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *_: object) -> None:  # quiet
        pass


def s3_settings(endpoint: str) -> list[str]:
    """Hadoop's s3a settings for the test's S3 API (microseg's storage module reads the same keys)."""
    prefix = "spark.settings.spark.hadoop.fs.s3a."
    return [
        f"{prefix}endpoint={endpoint}",
        f"{prefix}endpoint.region={REGION}",
        f"{prefix}access.key={KEY}",
        f"{prefix}secret.key={SECRET}",
        f"{prefix}path.style.access='true'",
        f"{prefix}connection.ssl.enabled='false'",
    ]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory):
    """The S3 API, the MLflow server writing its artifacts to it, and the dropping proxy before the server."""
    import boto3

    root = tmp_path_factory.mktemp("cloud")
    s3_port, mlflow_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    aws = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION}
    with serving([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], s3_port, root / "s3.log"):
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET)
        s3.create_bucket(Bucket=BUCKET)
        mlflow_server = [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
            "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}/mlflow",
            "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, **aws, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        with serving(mlflow_server, mlflow_port, root / "mlflow.log", env=env):
            handler = type("Proxy", (DroppingProxy,), {"target": mlflow_port, "dropped": []})
            proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=proxy.serve_forever, daemon=True).start()
            try:
                yield {
                    "s3": s3,
                    "endpoint": endpoint,
                    "tracking_uri": f"http://127.0.0.1:{proxy.server_address[1]}",
                    "dropped": handler.dropped,
                    "root": root,
                }
            finally:
                proxy.shutdown()


def microseg(*args: str, log: Path) -> str:
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        # MLflow's own retry of one HTTP request, once and at once: what outlasts it reaches microseg's retries.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    with open(log, "w") as out:  # written as the run goes, to follow it
        done = subprocess.run(
            [str(BIN / "microseg"), *args], stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT, env=env
        )
    output = log.read_text()
    assert done.returncode == 0, f"microseg {args[0]} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def run_on_s3(tiny_generated, cloud):
    """Generated sources in the bucket, then every stage with the lake in the bucket and MLflow on the server."""
    root = cloud["root"]
    # Generated by the tests' session and uploaded: datagen through s3a would triple the module's time.
    data, manifest = tiny_generated
    for file in sorted(p for p in data.rglob("*") if p.is_file() and not p.name.startswith(".")):
        cloud["s3"].upload_file(str(file), BUCKET, f"raw/{file.relative_to(data).as_posix()}")
    sets = [
        *SETTINGS,
        *s3_settings(cloud["endpoint"]),
        f"lake.root=s3a://{BUCKET}/lake",
        f"sources.root=s3a://{BUCKET}/raw",
        f"mlflow.tracking_uri={cloud['tracking_uri']}",
        f"tables.metastore_dir={root / 'metastore'}",  # Derby stays on local disk; the tables are in S3
    ]
    args = ["--conf", str(REPO / "conf" / "local.yaml"), *(f"--set={s}" for s in sets)]
    run = microseg("run", *args, "--as-of", str(AS_OF), log=root / "run.log")
    return {**cloud, "output": run, "manifest": manifest}


def delta(cloud: dict, table: str):
    """A lake table read by delta-rs straight from S3."""
    from deltalake import DeltaTable

    options = {
        "AWS_ENDPOINT_URL": cloud["endpoint"],
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": REGION,
        "AWS_ALLOW_HTTP": "true",
    }
    return DeltaTable(f"s3://{BUCKET}/lake/{table}", storage_options=options)


def keys(cloud: dict, prefix: str) -> list[str]:
    pages = cloud["s3"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_gold_tables_on_s3_read_back_with_delta_rs(run_on_s3):
    # Every generated order reached bronze in S3 (the files were listed and read through s3a).
    assert len(delta(run_on_s3, "bronze/orders").to_pandas()) == run_on_s3["manifest"]["rows"]["orders"]
    features = delta(run_on_s3, "gold/customer_features").to_pandas()
    features = features[features["as_of"] == AS_OF]
    assignments = delta(run_on_s3, "gold/segment_assignments").to_pandas()
    today = assignments[assignments["as_of"] == AS_OF]
    # One assignment per featured customer and trained layer (value only here), no customer twice.
    assert len(features) > 0.9 * run_on_s3["manifest"]["customers"]
    assert set(today["layer"]) == {"value"}
    assert sorted(today["customer_id"]) == sorted(features["customer_id"])
    profiles = delta(run_on_s3, "gold/segment_profiles").to_pandas()
    sizes = today.groupby("segment_id").size().to_dict()
    latest = profiles[(profiles["as_of"] == AS_OF) & (profiles["layer"] == "value")]
    assert dict(zip(latest["segment_id"], latest["size"], strict=True)) == sizes
    assert delta(run_on_s3, "gold/segment_assignments").metadata().partition_columns  # created as declared


def test_report_and_data_docs_fetched_from_s3(run_on_s3):
    reports = keys(run_on_s3, "lake/reports/")
    assert len(reports) == 1 and reports[0].startswith(f"lake/reports/segment_report_{AS_OF}_")
    html = run_on_s3["s3"].get_object(Bucket=BUCKET, Key=reports[0])["Body"].read().decode()
    assert html.startswith("<!doctype html>") and str(AS_OF) in html and "<img" in html
    assert "lake/ops/data_docs/index.html" in keys(run_on_s3, "lake/ops/data_docs/")
    assert not Path("s3a:").exists()  # nothing written to a local folder named after the scheme


def test_models_registered_on_the_server_with_artifacts_in_s3(run_on_s3):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=run_on_s3["tracking_uri"])
    champions = {}
    for model in client.search_registered_models():
        champions[model.name] = client.get_model_version_by_alias(model.name, "champion")
    segment_models = sorted(name for name in champions if name.startswith("microseg-value"))
    assert segment_models and "microseg-clv" in champions
    assert set(champions) - set(segment_models) <= {"microseg-clv", "microseg-churn"}, champions
    run = client.get_run(champions[segment_models[0]].run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server...
    stored = keys(run_on_s3, "mlflow/")
    assert any(key.endswith("MLmodel") for key in stored)  # ...which keeps them in the bucket
    assert any(key.endswith("k_selection.png") for key in stored)


def test_a_dropped_registry_call_is_retried(run_on_s3):
    """The proxy answered two alias calls with 503: MLflow's client retried the first, microseg the second."""
    assert len(run_on_s3["dropped"]) == DROPPED
    retried = [line for line in run_on_s3["output"].splitlines() if "set_registered_model_alias failed" in line]
    assert len(retried) == 1, run_on_s3["output"][-3000:]
    assert "registered-models/alias" in retried[0] and "try 2 of 5" in retried[0]
