"""Bad input: one clear line on stderr, a documented exit code, no traceback, nothing published."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.cli import main
from scoring.errors import ExitCode
from tests.conftest import free_port
from tests.models import logged_name

GB_QUERY = "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p"


@pytest.fixture()
def cli(registry, tmp_path, capsys, monkeypatch):
    """Run ``scoring`` in-process; return (exit code, stderr, output path)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("SCORING_HOME", str(registry.home))
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out" / "scored.parquet"

    def run(*args: str, models=("gb=models:/gb/1",), tables=None, query=GB_QUERY, dialect="tsql"):
        argv = ["run", "--dialect", dialect, "--output", str(out)]
        for m in models:
            argv += ["--model", m]
        for t in tables if tables is not None else (f"t={registry.tables['gb']}",):
            argv += ["--table", t]
        if query is not None:
            argv += ["--query", query]
        code = main([*argv, *args])
        err = capsys.readouterr().err
        return code, err, out

    return run


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("scoring: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def assert_nothing_published(out: Path) -> None:
    """No result and no temporary file; at most the run manifest, which records the failure."""
    assert not out.exists()
    if out.parent.exists():
        assert {p.name for p in out.parent.iterdir()} <= {f"{out.name}.failed.run.json"}
    manifest = out.parent / f"{out.name}.failed.run.json"
    if manifest.exists():
        record = json.loads(manifest.read_text())
        assert record["status"] == "failed" and record["exit_code"] != 0 and record["error"]


def test_success_exit_code_and_metadata(cli):
    code, err, out = cli()
    assert code == ExitCode.OK, err
    meta = __import__("scoring.writer", fromlist=["read_metadata"]).read_metadata(out)
    assert meta["models"]["gb"]["pinned_uri"] == "models:/gb/1"
    assert len(meta["models"]["gb"]["sha256"]) == 64
    assert meta["rows"] == pq.read_table(out).num_rows == 400
    manifest = json.loads((out.parent / "scored.parquet.run.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["exit_code"] == 0 and manifest["rows"] == 400
    assert manifest["models"]["gb"]["sha256"] == meta["models"]["gb"]["sha256"]
    assert manifest["rows_scored"] == {"gb": 400} and manifest["seconds"] > 0


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        ("gb=models:/gbb/1", ExitCode.MODEL_NOT_FOUND, r"model 'gbb' is not registered .*; did you mean 'gb'\?"),
        ("gb=models:/gb/9", ExitCode.MODEL_NOT_FOUND, r"model 'gb' has no version 9 \(versions: 1, 2\)"),
        ("gb=models:/gb@champ", ExitCode.MODEL_NOT_FOUND, r"model 'gb' has no alias 'champ' .*did you mean 'champion'"),
        ("gb=models:/gb/one", ExitCode.MODEL_NOT_FOUND, r"version 'one' is not a number"),
        ("gb=/nowhere/model.onnx", ExitCode.MODEL_NOT_FOUND, r"model file '/nowhere/model.onnx' does not exist"),
        ("g-b=models:/gb/1", ExitCode.CONFIG, r"model name 'g-b' is not a plain SQL identifier"),
        ("gb", ExitCode.USAGE, r"--model expects NAME=VALUE"),
    ],
)
def test_bad_model_reference(cli, model, code, message):
    got, err, out = cli(models=(model,))
    assert got == code
    assert __import__("re").search(message, error_line(err)), err
    assert_nothing_published(out)


def test_corrupt_model_file(cli, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07 definitely not a protobuf model" * 10)
    code, err, out = cli(models=(f"gb={bad}",))
    assert code == ExitCode.MODEL_LOAD
    assert "is not a loadable ONNX model" in error_line(err)
    assert_nothing_published(out)


def test_non_onnx_flavor_is_refused(cli, registry, tmp_path):
    import mlflow
    import mlflow.sklearn

    case = registry.cases["gb_v2"]  # a logistic regression: skops serializes it without questions
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(case.estimator, **logged_name("skl"))
    code, err, out = cli(models=(f"gb=runs:/{info.run_id}/skl",))
    assert code == ExitCode.MODEL_LOAD
    assert "only the 'onnx' flavor is loaded" in error_line(err)
    assert_nothing_published(out)


def test_unreachable_registry_is_retryable(cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, err, out = cli()
    assert code == ExitCode.REGISTRY_UNAVAILABLE
    assert "unreachable" in error_line(err)
    assert_nothing_published(out)


def test_unknown_table_file(cli):
    code, err, out = cli(tables=("t=/nowhere/t.parquet",))
    assert code == ExitCode.INPUT_DATA
    assert "table 't': no Parquet file or folder at '/nowhere/t.parquet'" in error_line(err)
    assert_nothing_published(out)


def test_unknown_table_in_query(cli):
    code, err, out = cli(query=GB_QUERY.replace("t AS d", "patients AS d"))
    assert code == ExitCode.INPUT_DATA
    assert "patients" in error_line(err)
    assert_nothing_published(out)


def test_unknown_column_in_query(cli):
    code, err, out = cli(query=GB_QUERY.replace("d.id", "d.idd"), dialect="tsql")
    assert code == ExitCode.QUERY
    assert "idd" in error_line(err)
    assert_nothing_published(out)


def test_missing_model_column_suggests_the_closest(cli, registry, tmp_path):
    frame = registry.cases["gb"].frame.rename(columns={"f3": "f_3"})
    path = tmp_path / "renamed.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    code, err, out = cli(tables=(f"t={path}",))
    assert code == ExitCode.SCHEMA_MISMATCH
    assert "model 'gb' needs column 'f3' (float) but table 't' has no such column; did you mean 'f_3'?" in error_line(
        err
    )
    assert_nothing_published(out)


def test_string_column_for_a_float_input(cli, registry, tmp_path):
    frame = registry.cases["gb"].frame.astype({"f2": str})
    path = tmp_path / "strings.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    code, err, out = cli(tables=(f"t={path}",))
    assert code == ExitCode.SCHEMA_MISMATCH
    assert "input 'f2' expects float, but column 'f2' of table 't' is string" in error_line(err)
    assert_nothing_published(out)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "SELECT gb(f0, f1) AS p FROM t",
            "model 'gb' takes 6 arguments (f0, f1, f2, f3, f4, f5), but gb(...) passes 2",
        ),
        (
            "SELECT gb(f0, CAST(f1 AS VARCHAR), f2, f3, f4, f5) AS p FROM t",
            "model 'gb' argument 2 (f1) expects DOUBLE, but the call passes VARCHAR",
        ),
        (  # constants cast to fit: the column is the culprit
            "SELECT gb(1, 2.5, f2, f3, f4, CAST(f5 AS VARCHAR)) AS p FROM t",
            "model 'gb' argument 6 (f5) expects DOUBLE, but the call passes VARCHAR",
        ),
    ],
)
def test_a_plain_call_that_does_not_fit_the_model(cli, query, message):
    code, err, out = cli(query=query, dialect="duckdb")
    assert code == ExitCode.SCHEMA_MISMATCH
    assert error_line(err) == f"scoring: error: {message}"
    assert_nothing_published(out)


@pytest.mark.parametrize(
    ("with_clause", "message"),
    [
        ("(labell BIGINT)", r"model 'gb' has no output 'labell' .*did you mean 'label'"),
        ("(probability FLOAT)", r"output 'probability' is list<item: float>; it cannot be declared as FLOAT"),
    ],
)
def test_bad_with_declaration(cli, with_clause, message):
    query = f"SELECT p.* FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH {with_clause} AS p"
    code, err, out = cli(query=query)
    assert code == ExitCode.SCHEMA_MISMATCH
    assert __import__("re").search(message, error_line(err)), err
    assert_nothing_published(out)


@pytest.mark.parametrize(
    ("query", "dialect", "message"),
    [
        ("SELECT * FROM PREDICT(MODEL = 'gb', DATUM = t AS d) AS p", "tsql", r"PREDICT expects MODEL =, DATA ="),
        ("SELECT * FROM PREDICT(MODEL = 'gb', DATA = t AS d, RUNTIME = PYTHON) AS p", "tsql", r"RUNTIME = PYTHON"),
        ("SELECT 1; SELECT 2", "duckdb", r"a query before the last statement is not allowed in a scoring script"),
        ("SELECT FROM WHERE", "tsql", r"cannot parse the query as tsql SQL"),
        (
            "SELECT d.idd FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p",
            "tsql",
            r"column 'idd' is not in DATA 't' \(alias d\); did you mean 'id'\?",
        ),
        (
            "SELECT d.id FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p WHERE p.lable = 1",
            "tsql",
            r"column 'lable' is not in the PREDICT result \(alias p: .*\); did you mean 'label'\?",
        ),
    ],
)
def test_bad_query(cli, query, dialect, message):
    code, err, out = cli(query=query, dialect=dialect)
    assert code == ExitCode.QUERY
    assert __import__("re").search(message, error_line(err)), err
    assert_nothing_published(out)


def test_unknown_dialect_suggests(cli):
    code, err, _ = cli(dialect="duckbd")
    assert code == ExitCode.CONFIG
    assert "unknown SQL dialect 'duckbd'; did you mean 'duckdb'?" in error_line(err)


def test_null_policy_error_names_the_column(cli, registry, tmp_path):
    frame = registry.cases["gb"].frame.copy()
    frame.loc[5, "f1"] = None
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    code, err, out = cli("--null", "error", tables=(f"t={path}",))
    assert code == ExitCode.SCHEMA_MISMATCH
    assert "input 'f1' received 1 NULL value(s) while the null policy is 'error'" in error_line(err)
    assert_nothing_published(out)


def test_mode_error_refuses_existing_output(cli):
    code, _, out = cli()
    assert code == ExitCode.OK
    before = out.read_bytes()
    record = (out.parent / "scored.parquet.run.json").read_text()
    code, err, _ = cli("--mode", "error")
    assert code == ExitCode.OUTPUT
    # The refusal is on record without replacing the record of the result it kept.
    assert (out.parent / "scored.parquet.run.json").read_text() == record
    assert json.loads((out.parent / "scored.parquet.failed.run.json").read_text())["exit_code"] == ExitCode.OUTPUT
    assert "already exists" in error_line(err)
    assert out.read_bytes() == before  # the refused run left the result as it was
    # (Compared before the next run: a new result differs in its created_at second.)
    assert cli()[0] == ExitCode.OK and not (out.parent / "scored.parquet.failed.run.json").exists()


def test_debug_shows_the_traceback(cli):
    code, err, _ = cli("--debug", models=("gb=models:/gbb/1",))
    assert code == ExitCode.MODEL_NOT_FOUND
    assert "Traceback" in err


def test_environment_is_left_clean():
    assert "SCORING_CACHE_DIR" not in os.environ


def test_a_failing_disk_is_an_output_error_with_its_manifest(registry, tmp_path):
    """A write that the file system refuses (here: a file-size limit, as a full disk would) exits 10."""
    import subprocess
    import sys

    import numpy as np

    rows = 200_000
    big = tmp_path / "big.parquet"
    frame = {f"f{j}": np.random.default_rng(j).normal(size=rows) for j in range(6)}
    pq.write_table(pa.table({"id": np.arange(rows), **frame}), big)
    out = tmp_path / "out" / "scored.parquet"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # report EFBIG instead of dying
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))\n"
        "from scoring.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["run", "--model", "gb=models:/gb/1", "--table", f"t={big}", "--output", str(out)]
    argv += ["--query", "SELECT *, gb(f0, f1, f2, f3, f4, f5) AS p FROM t"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=registry.tracking_uri, SCORING_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == ExitCode.OUTPUT, proc.stderr
    line = error_line(proc.stderr)
    assert line.startswith(f"scoring: error: output '{out}': cannot write Parquet: ") and "File too large" in line
    assert_nothing_published(out)
    manifest = json.loads((out.parent / "scored.parquet.failed.run.json").read_text())
    assert manifest["exit_code"] == ExitCode.OUTPUT


def test_a_bad_command_line_is_one_line_and_exit_2(cli, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli("--mode", "overwirte")
    assert stopped.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "scoring run: error: argument --mode: invalid choice: 'overwirte' (choose from 'overwrite', 'error') "
        "(see 'scoring run --help')"
    ]
    code, err, out = cli(models=("gb:models:/gb/1",))
    assert code == ExitCode.USAGE
    assert error_line(err) == "scoring: error: --model expects NAME=VALUE, got 'gb:models:/gb/1'"
    assert_nothing_published(out)


def test_a_misspelt_home_is_not_an_empty_registry(registry, tmp_path, monkeypatch, capsys):
    """SCORING_HOME pointing nowhere: say so, instead of creating a registry and missing every model."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SCORING_HOME", str(tmp_path / ".scorign"))
    out = tmp_path / "out" / "scored.parquet"
    argv = ["run", "--model", "gb=models:/gb/1", "--table", f"t={registry.tables['gb']}", "--output", str(out)]
    assert main([*argv, "--query", "SELECT 1 AS x"]) == ExitCode.CONFIG
    database = (tmp_path / ".scorign" / "mlflow.db").resolve()
    assert error_line(capsys.readouterr().err) == (
        f"scoring: error: no MLflow registry at sqlite:///{database}: the file does not exist "
        "(check SCORING_HOME, SCORING_TRACKING_URI or MLFLOW_TRACKING_URI)"
    )
    assert not database.exists()
    assert_nothing_published(out)


def test_an_earlier_stop_is_not_blamed_for_a_later_failure(cli):
    """A process that ran (and stopped) one job reports the next job's own error."""
    import signal

    from scoring.errors import JobInterrupted

    JobInterrupted.request(signal.SIGTERM)
    try:
        code, err, _ = cli(models=("gb=models:/gbb/1",))
    finally:
        JobInterrupted.clear()
    assert code == ExitCode.MODEL_NOT_FOUND, err
