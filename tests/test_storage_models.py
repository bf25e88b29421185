# ruff: noqa: F811
"""Models whose files live on object storage: an MLflow registry with S3 artifacts (proxied by the
server, and downloaded by the client itself), and direct s3:// and http:// model URIs."""

from __future__ import annotations

import http.server
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoring.cli import main
from scoring.errors import ExitCode
from tests import models as M
from tests.object_store import SECRET, s3, s3_env, start_mlflow, stop  # noqa: F401

GB_QUERY = "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p"
# A bare ONNX file has no MLflow signature naming its columns: the call passes them.
CALL_QUERY = "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t"


@pytest.fixture()
def score(registry, tmp_path, capsys, monkeypatch):
    """``scoring run`` in-process with ``model``; returns (exit code, stderr, labels in id order)."""
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "home"))

    def run(model: str, tracking: str = registry.tracking_uri, query: str = GB_QUERY):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        out = tmp_path / "scored.parquet"
        argv = ["run", "--model", f"gb={model}", "--table", f"t={registry.tables['gb']}"]
        dialect = ["--dialect", "tsql"] if query == GB_QUERY else []
        code = main([*argv, *dialect, "--query", query, "--output", str(out)])
        err = capsys.readouterr().err
        labels = pq.read_table(out).sort_by("id")["label"].to_numpy() if code == 0 else None
        return code, err, labels

    return run


def _register_through(url: str, case: M.Case, experiment: str) -> None:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    try:
        mlflow.set_experiment(experiment)
        M.register(case, "gb", aliases=("champion",))
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("mode", ["proxied", "direct"])
def test_registry_with_s3_artifacts(registry, s3_env, score, tmp_path, mode):
    """``--artifacts-destination s3://`` (the server proxies the artifacts) and
    ``--default-artifact-root s3://`` (the client reads S3 itself, endpoint from AWS_ENDPOINT_URL)."""
    options = (
        ["--artifacts-destination", f"s3://lake/{mode}"]
        if mode == "proxied"
        else ["--default-artifact-root", f"s3://lake/{mode}", "--no-serve-artifacts"]
    )
    url, proc = start_mlflow(tmp_path, options, s3_env.env())
    try:
        _register_through(url, registry.cases["gb"], f"s3-{mode}")
        stored = s3_env.client().list_objects_v2(Bucket="lake", Prefix=f"{mode}/").get("Contents", [])
        assert any(o["Key"].endswith("model.onnx") for o in stored)  # the artifact really is on S3
        code, err, labels = score("models:/gb@champion", tracking=url)
        assert code == ExitCode.OK, err
        np.testing.assert_array_equal(labels, registry.cases["gb"].expected_label())
        assert SECRET not in err
    finally:
        stop(proc)


def test_direct_s3_model_uri(registry, s3_env, score):
    s3_env.client().put_object(Bucket="lake", Key="models/gb.onnx", Body=registry.cases["gb"].onnx.SerializeToString())
    code, err, labels = score("s3://lake/models/gb.onnx", query=CALL_QUERY)
    assert code == ExitCode.OK, err
    np.testing.assert_array_equal(labels, registry.cases["gb"].expected_label())
    code, err, _ = score("s3://lake/models/missing.onnx", query=CALL_QUERY)
    assert code == ExitCode.MODEL_NOT_FOUND, err
    assert "model 's3://lake/models/missing.onnx': no file at 's3://lake/models/missing.onnx'" in err


def test_direct_http_model_uri_on_loopback(registry, score):
    payload = registry.cases["gb"].onnx.SerializeToString()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/gb.onnx":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        code, err, labels = score(f"{base}/gb.onnx", query=CALL_QUERY)
        assert code == ExitCode.OK, err
        np.testing.assert_array_equal(labels, registry.cases["gb"].expected_label())
        code, err, _ = score(f"{base}/nothing.onnx", query=CALL_QUERY)
        assert code == ExitCode.MODEL_NOT_FOUND and "HTTP 404" in err, err
    finally:
        server.shutdown()
        server.server_close()
