"""`scoring run --engine spark`: Parquet folder, manifest, executor-side errors, atomic publish."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.cli import main
from scoring.errors import ExitCode
from tests.conftest import spark_run_args

pytestmark = pytest.mark.spark

QUERY = (
    "SELECT d.*, p.label AS predicted FROM PREDICT(MODEL = 'gb', DATA = t AS d, RUNTIME = ONNX) "
    "WITH (label BIGINT) AS p"
)


@pytest.fixture()
def run_spark(registry, tmp_path, capsys, monkeypatch, spark_ready):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "home"))

    def run(table, *args):
        out = tmp_path / "out" / "scored"
        code = main(
            [
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
                QUERY,
                "--output",
                str(out),
                *args,
            ]
        )
        return code, capsys.readouterr().err, out

    return run


def test_spark_job_writes_a_folder_with_a_manifest(registry, run_spark):
    code, err, out = run_spark(registry.tables["gb"])
    assert code == ExitCode.OK, err
    table = pq.read_table(out)
    table = table.take(np.argsort(table.column("id").to_numpy()))
    np.testing.assert_array_equal(table.column("predicted").to_numpy(), registry.cases["gb"].expected_label())
    manifest = json.loads((out / "_scoring.json").read_text())
    assert manifest["models"]["gb"]["pinned_uri"] == "models:/gb/1"
    assert manifest["rows"] == len(registry.cases["gb"].frame)
    assert sorted(p.name for p in out.parent.iterdir()) == ["scored", "scored.run.json"]  # no temporary folder


def test_executor_error_is_typed_and_nothing_is_published(registry, run_spark, tmp_path):
    frame = registry.cases["gb"].frame.copy()
    frame.loc[7, "f4"] = None
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    code, err, out = run_spark(path, "--null", "error")
    assert code == ExitCode.SCHEMA_MISMATCH, err
    lines = [line for line in err.splitlines() if line.startswith("scoring: ")]
    assert lines == ["scoring: error: model 'gb' input 'f4' received 1 NULL value(s) while the null policy is 'error'"]
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == ["scored.failed.run.json"]
    failed = json.loads((out.parent / "scored.failed.run.json").read_text())
    assert failed["exit_code"] == ExitCode.SCHEMA_MISMATCH


def test_missing_java_says_what_to_install(registry, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(registry.env(), PATH=str(tmp_path), SCORING_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "scoring.cli", *spark_run_args(registry.tables["gb"], str(out), "SELECT 1")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == ExitCode.ENGINE_UNAVAILABLE, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "scoring: error: the Spark engine needs a Java 17+ runtime: install it "
        "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    )
    assert not out.exists()
