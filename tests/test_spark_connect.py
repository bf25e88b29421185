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
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoring.errors import ExitCode
from tests.conftest import CONNECT_TOKEN as TOKEN
from tests.conftest import free_port, skip_without_a_connect_server

pytestmark = [pytest.mark.spark, pytest.mark.slow]
HERE = Path(__file__).parent


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


def test_a_model_with_external_data_scores_on_connect(registry, connect_server, tmp_path):
    """An MLflow-logged model whose weights are a separate file reaches the Connect server's
    executors as one archive (addArtifacts(..., archive=True)) and scores like scikit-learn."""
    from tests.models import log_external_mlp

    case = registry.cases["reg"]
    uri, est, x, _external = log_external_mlp(case, registry.tracking_uri, str(tmp_path / "mlp"))
    out = tmp_path / "out" / "scored"
    out.parent.mkdir()
    query = f"SELECT x0, mlp({', '.join(case.features)}) AS y FROM r"
    argv = ["run", "--engine", "spark", "--model", f"mlp={uri}", "--table", f"r={registry.tables['reg']}"]
    proc = subprocess.run(
        [sys.executable, "-m", "scoring.cli", *argv, "--query", query, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
        env=_client_env(registry, tmp_path, SCORING_SPARK_REMOTE=connect_server, SCORING_HOME=str(tmp_path / "h")),
    )
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    table = pq.read_table(out).sort_by("x0")
    expected = est.predict(x)[np.argsort(x[:, 0], kind="stable")]
    np.testing.assert_allclose(table.column("y").to_numpy(), expected, rtol=1e-4, atol=1e-4)


def test_an_unreachable_connect_server_is_exit_11(registry, tmp_path):
    skip_without_a_connect_server()
    url = f"sc://localhost:{free_port()}/;token={TOKEN}"
    proc, out = _cli(registry, url, tmp_path, registry.tables["gb"])
    assert proc.returncode == ExitCode.ENGINE_UNAVAILABLE, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if " INFO " not in line]  # the job's own log
    assert len(lines) == 1 and lines[0].startswith(
        f"scoring: error: Spark Connect server sc://localhost:{url.split(':')[2].split('/')[0]} cannot be used: "
    ), lines
    assert TOKEN not in proc.stderr and not out.exists()
