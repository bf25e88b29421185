"""What the command prints around a job: help with defaults and examples, the final error line
(text, or JSON with JSON logs), one log line per model."""

from __future__ import annotations

import json
import logging

import pytest

from scoring.cli import main
from scoring.errors import ExitCode


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def test_run_help_shows_defaults_examples_and_what_output_is(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "(default: duckdb) [SCORING_ENGINE]" in text
    assert "(default: overwrite) [SCORING_MODE]" in text
    assert "a Parquet file on DuckDB, a folder of Parquet files on Spark" in text
    assert "examples:" in text and "--sql sql/examples/breast_cancer.sql" in text
    assert "ML.PREDICT(MODEL bc, TABLE patients)" in text


def test_inspect_help_names_its_flags(capsys):
    with pytest.raises(SystemExit):
        main(["models", "inspect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--name NAME" in text and "(default: my_table)" in text and "examples:" in text


@pytest.mark.parametrize(
    ("argv", "env", "code", "kind", "needle"),
    [
        (
            ["models", "inspect", "/no/such/model.onnx"],
            {},
            ExitCode.MODEL_NOT_FOUND,
            "ModelNotFoundError",
            "model.onnx",
        ),
        (["run", "--bogus"], {}, ExitCode.USAGE, "UsageError", "unrecognized arguments: --bogus"),
        (["models", "inspect", "m.onnx"], {"SCORING_MDOE": "x"}, ExitCode.CONFIG, "ConfigError", "SCORING_MODE"),
    ],
)
def test_json_logs_end_a_failure_with_a_json_line(capsys, monkeypatch, argv, env, code, kind, needle):
    monkeypatch.setenv("SCORING_LOG_FORMAT", "json")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        got = main(argv)
    except SystemExit as stop:  # argparse exits by itself
        got = stop.code
    assert got == code
    record = json.loads(_last_line(capsys.readouterr().err))
    assert record["level"] == "error" and record["exit_code"] == int(code) and record["error"] == kind
    assert record["message"].startswith("scoring: error: ") and needle in record["message"]


def test_log_format_flag_alone_makes_the_error_line_json(capsys, monkeypatch):
    monkeypatch.delenv("SCORING_LOG_FORMAT", raising=False)
    assert main(["models", "inspect", "/no/such/model.onnx", "--log-format", "json"]) == ExitCode.MODEL_NOT_FOUND
    assert json.loads(_last_line(capsys.readouterr().err))["exit_code"] == int(ExitCode.MODEL_NOT_FOUND)


def test_text_logs_keep_the_plain_error_line(capsys, monkeypatch):
    monkeypatch.delenv("SCORING_LOG_FORMAT", raising=False)
    assert main(["models", "inspect", "/no/such/model.onnx"]) == ExitCode.MODEL_NOT_FOUND
    assert _last_line(capsys.readouterr().err).startswith("scoring: error: model file '/no/such/model.onnx'")


@pytest.mark.parametrize(
    ("models", "query", "dialect", "needle", "pinned"),
    [
        (
            {"gb": "models:/gb@champion"},
            "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS y FROM t",
            None,
            "models:/gb",
            "models:/gb@champion pinned to models:/gb/1",
        ),
        (  # a model named inside the query
            {},
            "SELECT d.id, p.label FROM PREDICT(MODEL = 'models:/gb/2', DATA = t AS d, RUNTIME = ONNX) "
            "WITH (label BIGINT) AS p",
            "tsql",
            "models:/gb/2",
            "models:/gb/2 pinned to models:/gb/2",
        ),
    ],
)
def test_a_job_logs_one_line_per_model(registry, tmp_path, models, query, dialect, needle, pinned):
    from scoring.job import JobSpec, run_job
    from scoring.settings import Settings

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    settings = Settings(home=registry.home, tracking_uri=registry.tracking_uri, cache_dir=tmp_path / "cache")
    spec = JobSpec(
        models=models,
        tables={"t": str(registry.tables["gb"])},
        query=query,
        output=str(tmp_path / "out.parquet"),
        dialect=dialect,
    )
    logger = logging.getLogger("scoring")
    collect, level = Collect(), logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        run_job(spec, settings)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    lines = [m for m in collect.messages if needle in m]
    assert len(lines) == 1, lines
    assert pinned in lines[0] and "sha256" in lines[0]


def test_unnamed_matrix_input_in_ml_predict_names_the_bound_model_and_the_ways_out(tmp_path, capsys, monkeypatch):
    """A local .onnx with one [N, F] input and no signature: its columns are features_0 ..."""
    import onnx
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests import models as M

    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCORING_LOG_FORMAT", raising=False)
    model = tmp_path / "bc_v1.onnx"
    onnx.save(M.gradient_boosting(rows=60).onnx, model)
    table = tmp_path / "patients.parquet"
    pq.write_table(pa.table({"mean_radius": [1.0], "mean_texture": [2.0]}), table)
    code = main(
        [
            "run",
            "--dialect",
            "bigquery",
            "--model",
            f"bc={model}",
            "--table",
            f"patients={table}",
            "--query",
            "SELECT * FROM ML.PREDICT(MODEL bc, TABLE patients)",
            "--output",
            str(tmp_path / "out.parquet"),
        ]
    )
    assert code == ExitCode.SCHEMA_MISMATCH
    line = _last_line(capsys.readouterr().err)
    assert line.startswith("scoring: error: model 'bc' needs column 'features_0'"), line
    assert "bc_v1" not in line
    assert "no MLflow signature names its columns" in line and "features_0 ... features_5" in line
    assert "call bc(col, ...) in a plain query, which binds columns by position" in line


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_final_error_line_is_redacted(capsys, monkeypatch, tmp_path, log_format):
    monkeypatch.setenv("SCORING_LOG_FORMAT", log_format)
    argv = ["run", "--model", "bc:https://user:s3cret@mlflow.example/x", "--query", "SELECT 1"]
    assert main([*argv, "--output", str(tmp_path / "o.parquet")]) == ExitCode.USAGE
    line = _last_line(capsys.readouterr().err)
    assert "--model expects NAME=VALUE" in line and "s3cret" not in line
    if log_format == "json":
        assert json.loads(line)["error"] == "UsageError"
