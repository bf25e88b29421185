"""Spark Connect: scoring.register on a Connect client session, and the CLI with SCORING_SPARK_REMOTE.

A local Connect server (tests/spark_connect_server.py) runs in its own process; every client
here is a separate process too, so that no JVM is reachable from the client at all and the
pytest process keeps its classic session. pyspark 3.5's pip package has no Connect server jar
(it would fetch it from Maven), so there the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoring.errors import ExitCode
from tests.conftest import free_port

pytestmark = [pytest.mark.spark, pytest.mark.slow]
HERE = Path(__file__).parent
TOKEN = "connect-test-secret-7f3a"


def _skip_without_a_connect_server() -> None:
    pyspark = pytest.importorskip("pyspark")
    jars = Path(pyspark.__file__).parent / "jars"
    if not list(jars.glob("spark-connect_*.jar")):
        pytest.skip(f"pyspark {pyspark.__version__} bundles no Spark Connect server (pyspark 4.0+ does)")
    try:
        import grpc  # noqa: F401
        import grpc_status  # noqa: F401
    except ImportError:
        pytest.skip('the Spark Connect client libraries are missing: pip install "pyspark[connect]"')


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory) -> Iterator[str]:
    """A local Connect server on a free port; yields the client URL (token included)."""
    _skip_without_a_connect_server()
    port = free_port()
    log = tmp_path_factory.mktemp("connect") / "server.log"
    env = {**os.environ, "SPARK_CONNECT_AUTHENTICATE_TOKEN": TOKEN}
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "spark_connect_server.py"), str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
            env=env,
            cwd=HERE.parent,
        )
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        line = proc.stdout.readline()  # "ready", or "" if it died
        if line.strip() != "ready":
            pytest.fail(f"Connect server did not start: {log.read_text()[-3000:]}")
        print(f"Connect server on port {port} ready in {time.monotonic() - started:.1f} s")
        yield f"sc://localhost:{port}/;token={TOKEN}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client_env(registry, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
    env.update(registry.env(), SCORING_CACHE_DIR=str(tmp_path / "cache"), **extra)
    return env


def test_register_on_a_connect_session(registry, connect_server, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "spark_connect_job.py"),
            connect_server,
            str(registry.tables["gb"]),
            str(registry.tables["churn"]),
            registry.tracking_uri,
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
        env=_client_env(registry, tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["session"].startswith("pyspark.sql.connect")
    np.testing.assert_array_equal(report["labels"], registry.cases["gb"].expected_label())
    churn = registry.cases["churn"]
    np.testing.assert_array_equal(report["churn_labels"], churn.expected_label())
    np.testing.assert_allclose(report["churn_probabilities"], churn.expected_proba(), rtol=1e-5, atol=1e-5)


def _cli(registry, connect_server, tmp_path, table: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out" / "scored"
    out.parent.mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoring.cli",
            "run",
            "--engine",
            "spark",
            "--dialect",
            "tsql",
            "--model",
            "gb=models:/gb@champion",
            "--table",
            f"t={table}",
            "--query",
            "SELECT d.*, p.label AS predicted FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p",
            "--output",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
        env=_client_env(registry, tmp_path, SCORING_SPARK_REMOTE=connect_server, SCORING_HOME=str(tmp_path / "h")),
    )
    return proc, out


def test_cli_runs_on_a_connect_server(registry, connect_server, tmp_path):
    proc, out = _cli(registry, connect_server, tmp_path, registry.tables["gb"])
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    table = pq.read_table(out)
    table = table.take(np.argsort(table.column("id").to_numpy()))
    np.testing.assert_array_equal(table.column("predicted").to_numpy(), registry.cases["gb"].expected_label())
    manifest = json.loads((out.parent / "scored.run.json").read_text())
    assert manifest["spark_session"] == "connect"
    assert manifest["rows"] == len(registry.cases["gb"].frame)
    assert manifest["rows_scored"] == {"gb": None}  # not counted: Connect has no accumulators
    assert "gb: models:/gb/1" in proc.stdout and "rows scored not counted" in proc.stdout
    assert json.loads((out / "_scoring.json").read_text())["spark_session"] == "connect"
    assert sorted(p.name for p in out.parent.iterdir()) == ["scored", "scored.run.json"]
    everything = proc.stdout + proc.stderr + json.dumps(manifest)
    assert TOKEN not in everything


def test_executor_error_on_connect_is_typed(registry, connect_server, tmp_path):
    frame = registry.cases["gb"].frame.copy()
    frame.loc[7, "f4"] = None
    path = tmp_path / "nulls.parquet"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    proc, out = _cli(registry, connect_server, tmp_path, path, "--null", "error")
    assert proc.returncode == ExitCode.SCHEMA_MISMATCH, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if " INFO " not in line]  # the job's own log
    assert lines == ["scoring: error: model 'gb' input 'f4' received 1 NULL value(s) while the null policy is 'error'"]
    assert not out.exists()


def test_an_unreachable_connect_server_is_exit_11(registry, tmp_path):
    _skip_without_a_connect_server()
    url = f"sc://localhost:{free_port()}/;token={TOKEN}"
    proc, out = _cli(registry, url, tmp_path, registry.tables["gb"])
    assert proc.returncode == ExitCode.ENGINE_UNAVAILABLE, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if " INFO " not in line]  # the job's own log
    assert len(lines) == 1 and lines[0].startswith(
        f"scoring: error: Spark Connect server sc://localhost:{url.split(':')[2].split('/')[0]} cannot be used: "
    ), lines
    assert TOKEN not in proc.stderr and not out.exists()
