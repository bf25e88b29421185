"""The job file (``scoring run --job``): real registry, real DuckDB, real Parquet; no mocks."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoring.cli import main
from scoring.errors import ConfigError, ExitCode
from scoring.jobfile import EngineName, JobFile, load_job, tomllib
from scoring.settings import Settings
from scoring.writer import read_metadata

QUERY = "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SCORING_* / MLFLOW_* variable of the caller leaks into these tests; signal handlers restored."""
    for name in list(os.environ):
        if name.upper().startswith(("SCORING_", "MLFLOW_")):
            monkeypatch.delenv(name)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """The ``settings`` fixture, as the variables the CLI reads."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(settings.tracking_uri))
    monkeypatch.setenv("SCORING_HOME", str(settings.home))
    monkeypatch.setenv("SCORING_CACHE_DIR", str(settings.cache_dir))


def write_job(folder: Path, body: str, sql: str | None = QUERY) -> Path:
    """A job file in ``folder`` and, beside it in ``queries/``, the query it names."""
    folder.mkdir(parents=True, exist_ok=True)
    if sql is not None:
        (folder / "queries").mkdir(exist_ok=True)
        (folder / "queries" / "score.sql").write_text(sql)
    path = folder / "job.toml"
    path.write_text(textwrap.dedent(body))
    return path


def valid_job(folder: Path, table: Path, output: Path) -> Path:
    return write_job(
        folder,
        f"""
        dialect = "tsql"
        sql = "queries/score.sql"

        [models]
        gb = "models:/gb@champion"

        [tables]
        t = "{table}"

        [output]
        path = "{output}"
        compression = "snappy"
        mode = "overwrite"
    """,
    )


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scoring: error:")]
    assert len(lines) == 1, lines
    return lines[0]


# --- end to end -------------------------------------------------------------------------


def test_job_file_runs_end_to_end(registry, cli_env, tmp_path, monkeypatch, capsys) -> None:
    output = tmp_path / "out" / "scored.parquet"
    job = valid_job(tmp_path / "jobs", registry.tables["gb"], output)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the sql file is found beside the job file, not in the cwd

    assert main(["run", "--job", str(job)]) == ExitCode.OK

    scored = pq.read_table(output)
    assert scored.column_names == ["id", "label"]
    assert scored.num_rows == 400
    np.testing.assert_array_equal(scored["label"].to_numpy(), registry.cases["gb"].expected_label())
    meta = read_metadata(output)
    assert meta["models"]["gb"]["pinned_uri"] == "models:/gb/1"
    assert meta["dialect"] == "tsql"
    assert meta["query"] == QUERY
    assert meta["tables"] == {"t": str(registry.tables["gb"])}
    assert pq.ParquetFile(output).metadata.row_group(0).column(0).compression == "SNAPPY"
    assert "wrote 400 rows" in capsys.readouterr().out


def test_load_job_feeds_run_job(registry, settings, tmp_path) -> None:
    """The library path: load_job's spec and settings go straight into run_job."""
    from scoring.job import run_job

    output = tmp_path / "scored.parquet"
    spec, overrides = load_job(valid_job(tmp_path, registry.tables["gb"], output))
    assert overrides == {"dialect": "tsql", "mode": "overwrite", "compression": "snappy"}
    result = run_job(spec, settings.model_copy(update=overrides))
    assert result.rows == 400
    assert read_metadata(output)["dialect"] == "tsql"


# --- bad files: exit 3, one line naming the field -----------------------------------------

BAD_FILES = {
    "missing output path": ('query = "SELECT 1"\n[output]\nmode = "error"\n', "field 'output.path': Field required"),
    "missing output": ('query = "SELECT 1"\n', "field 'output': Field required"),
    "no query": ('[output]\npath = "o.parquet"\n', "field 'query': Field required"),
    "query and sql": ('query = "SELECT 1"\nsql = "a.sql"\n[output]\npath = "o.parquet"\n', "fields 'query' and 'sql'"),
    "model not a string": (
        'query = "x"\nmodels = { gb = 1 }\n[output]\npath = "o"\n',
        "field 'models.gb': Input should be a valid string",
    ),
    "bad engine": (
        'engine = "oracle"\nquery = "x"\n[output]\npath = "o"\n',
        "field 'engine': Input should be 'duckdb' or 'spark'",
    ),
    "bad mode": (
        'query = "x"\n[output]\npath = "o"\nmode = "append"\n',
        "field 'output.mode': Input should be 'overwrite' or 'error'",
    ),
    "misspelt key": (
        'query = "x"\ntabels = {}\n[output]\npath = "o"\n',
        "field 'tabels': Extra inputs are not permitted; did you mean 'tables'?",
    ),
    "misspelt output key": (
        'query = "x"\n[output]\npath = "o"\ncompresion = "zstd"\n',
        "field 'output.compresion': Extra inputs are not permitted; did you mean 'compression'?",
    ),
    "models not a table": (
        'query = "x"\nmodels = "gb"\n[output]\npath = "o"\n',
        "field 'models': Input should be a valid dictionary",
    ),
    "sql file missing": ('sql = "nope.sql"\n[output]\npath = "o"\n', "field 'sql': file"),
    "partitioned": ('query = "x"\n[output]\npath = "o"\npartition_by = ["a"]\n', "field 'output.partition_by'"),
    "not TOML": ("query = \n", "invalid TOML"),
}


@pytest.mark.parametrize("body,expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_job_file_exits_3_naming_the_field(tmp_path, monkeypatch, capsys, body: str, expected: str) -> None:
    job = write_job(tmp_path, body, sql=None)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--job", "job.toml"]) == ExitCode.CONFIG
    line = error_line(capsys)
    assert line.startswith("scoring: error: job file job.toml: "), line
    assert expected in line, line
    assert job.exists()


def test_missing_job_file_exits_3(tmp_path, capsys) -> None:
    assert main(["run", "--job", str(tmp_path / "nope.toml")]) == ExitCode.CONFIG
    assert "cannot be read: No such file or directory" in error_line(capsys)


def test_without_job_the_flags_stay_required(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--query", "SELECT 1"])
    assert stopped.value.code == ExitCode.USAGE
    assert "scoring run: error: the following arguments are required: --output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--output", "o.parquet"])
    assert stopped.value.code == ExitCode.USAGE
    assert "one of the arguments --query --sql is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    "variable,expected",
    [
        ("SCORING_MDOE", "environment SCORING_MDOE: not a scoring setting; did you mean 'SCORING_MODE'?"),
        (
            "SCORING_OUTPUT__PAHT",
            "environment SCORING_OUTPUT__PAHT: not a scoring setting; did you mean 'SCORING_OUTPUT__PATH'?",
        ),
    ],
)
def test_a_misspelt_variable_exits_3_before_anything_runs(tmp_path, monkeypatch, capsys, variable, expected) -> None:
    monkeypatch.setenv(variable, "error")
    out = tmp_path / "o.parquet"
    assert main(["run", "--query", "SELECT 1 AS x", "--output", str(out)]) == ExitCode.CONFIG
    assert error_line(capsys) == f"scoring: error: {expected}"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_every_documented_variable_is_known() -> None:
    from scoring.jobfile import known_variables

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    documented = set(re.findall(r"`(SCORING_[A-Z_]+)`", readme))
    assert documented and documented <= known_variables(), documented - known_variables()


# --- overrides: flags > SCORING_* > file --------------------------------------------------


def test_environment_overrides_the_file(tmp_path, monkeypatch) -> None:
    job = valid_job(tmp_path / "jobs", tmp_path / "t.parquet", tmp_path / "file.parquet")
    monkeypatch.setenv("SCORING_MODELS", "gb=models:/gb@challenger,extra=models:/reg/1")
    monkeypatch.setenv("SCORING_TABLES", json.dumps({"u": "u.parquet"}))
    monkeypatch.setenv("SCORING_QUERY", "SELECT 1")  # replaces the file's sql
    monkeypatch.setenv("SCORING_OUTPUT", "env.parquet")  # a plain path replaces output.path only
    monkeypatch.setenv("SCORING_MODE", "error")  # a Settings variable outranks output.mode

    spec, overrides = load_job(job)

    assert spec.models == {"gb": "models:/gb@challenger", "extra": "models:/reg/1"}
    assert spec.tables == {"t": str(tmp_path / "t.parquet"), "u": "u.parquet"}
    assert spec.query == "SELECT 1"
    assert spec.output == "env.parquet"
    assert overrides == {"dialect": "tsql", "compression": "snappy"}  # mode is left to SCORING_MODE


def test_environment_alone_describes_a_job(monkeypatch) -> None:
    """What a scheduler does with the image: no file, SCORING_* variables only."""
    monkeypatch.setenv("SCORING_MODELS", '{"gb": "models:/gb/1"}')
    monkeypatch.setenv("SCORING_TABLES", "t=/data/t.parquet")
    monkeypatch.setenv("SCORING_SQL", "/dev/null")
    monkeypatch.setenv("SCORING_OUTPUT", '{"path": "/data/o.parquet", "mode": "error"}')
    monkeypatch.setenv("SCORING_OUTPUT__COMPRESSION", "gzip")
    spec, overrides = load_job(None)
    assert spec.models == {"gb": "models:/gb/1"} and spec.tables == {"t": "/data/t.parquet"}
    assert spec.query == "" and spec.output == "/data/o.parquet"
    assert overrides == {"mode": "error", "compression": "gzip"}  # a field variable adds to the JSON


def test_a_field_variable_wins_over_the_whole_output_variable(monkeypatch) -> None:
    monkeypatch.setenv("SCORING_QUERY", "SELECT 1")
    monkeypatch.setenv("SCORING_OUTPUT", '{"path": "/data/o.parquet", "mode": "overwrite"}')
    monkeypatch.setenv("SCORING_OUTPUT__MODE", "error")
    assert load_job(None)[1] == {"mode": "error"}
    monkeypatch.setenv("SCORING_OUTPUT", "/data/plain.parquet")
    spec, overrides = load_job(None)
    assert spec.output == "/data/plain.parquet" and overrides == {"mode": "error"}


def test_without_job_file_the_variables_run_the_job(registry, cli_env, tmp_path, monkeypatch, capsys) -> None:
    """`scoring run` and nothing else: what a scheduler runs with the image and SCORING_* set."""
    output = tmp_path / "scored.parquet"
    monkeypatch.setenv("SCORING_MODELS", "gb=models:/gb/1")
    monkeypatch.setenv("SCORING_TABLES", f"t={registry.tables['gb']}")
    monkeypatch.setenv("SCORING_QUERY", "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t")
    monkeypatch.setenv("SCORING_OUTPUT", str(output))
    assert main(["run"]) == ExitCode.OK
    first = pq.read_table(output)
    np.testing.assert_array_equal(first["label"].to_numpy(), registry.cases["gb"].expected_label())

    monkeypatch.setenv("SCORING_OUTPUT__MODE", "error")  # honoured: the result is kept
    capsys.readouterr()
    assert main(["run"]) == ExitCode.OUTPUT
    assert "already exists and the write mode is 'error'" in error_line(capsys)
    assert pq.read_table(output).equals(first)


def test_nested_output_variables(monkeypatch) -> None:
    monkeypatch.setenv("SCORING_QUERY", "SELECT 1")
    monkeypatch.setenv("SCORING_OUTPUT__PATH", "o.parquet")
    monkeypatch.setenv("SCORING_OUTPUT__MODE", "error")
    spec, overrides = load_job(None)
    assert spec.output == "o.parquet" and overrides == {"mode": "error"}


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("SCORING_MODELS", "gb", "environment SCORING_MODELS: field 'models': expected NAME=VALUE"),
        ("SCORING_MODELS", "{not json", "environment SCORING_MODELS: field 'models'"),
        ("SCORING_OUTPUT__MODE", "append", "environment SCORING_OUTPUT: field 'output.mode'"),
    ],
)
def test_bad_variable_names_itself(tmp_path, monkeypatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_job(valid_job(tmp_path, tmp_path / "t.parquet", tmp_path / "o.parquet"))
    assert expected in str(error.value)


def test_flags_and_variables_end_to_end(registry, cli_env, tmp_path, monkeypatch, capsys) -> None:
    """SCORING_* over the file and flags over both, through the real command."""
    file_output = tmp_path / "file.parquet"
    job = valid_job(tmp_path / "jobs", registry.tables["gb"], file_output)
    env_output = tmp_path / "env.parquet"
    monkeypatch.setenv("SCORING_OUTPUT", str(env_output))
    monkeypatch.setenv("SCORING_MODELS", "gb=models:/gb@challenger")
    monkeypatch.setenv("SCORING_MODE", "error")

    assert main(["run", "--job", str(job)]) == ExitCode.OK
    assert not file_output.exists()
    assert read_metadata(env_output)["models"]["gb"]["pinned_uri"] == "models:/gb/2"

    # SCORING_MODE=error outranks the file's mode = "overwrite": the second run refuses.
    assert main(["run", "--job", str(job)]) == ExitCode.OUTPUT
    assert "already exists" in error_line(capsys)

    # ...and flags outrank the variables.
    flag_output = tmp_path / "flag.parquet"
    code = main(
        [
            "run",
            "--job",
            str(job),
            "--model",
            "gb=models:/gb/1",
            "--output",
            str(flag_output),
            "--query",
            "SELECT id FROM t WHERE id < 10",
            "--dialect",
            "duckdb",
        ]
    )
    assert code == ExitCode.OK
    meta = read_metadata(flag_output)
    assert meta["models"]["gb"]["pinned_uri"] == "models:/gb/1"
    assert meta["dialect"] == "duckdb"
    assert pq.read_table(flag_output).num_rows == 10


def test_job_file_settings_match_settings() -> None:
    """The file's engine-level fields accept exactly what Settings accepts."""
    assert get_args(EngineName) == get_args(Settings.model_fields["engine"].annotation)
    assert get_args(JobFile.model_fields["null"].annotation)[0] == Settings.model_fields["null"].annotation


def test_docker_example_job_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "docker" / "job.toml").read_text())
    job = JobFile.model_validate(data)
    assert job.models == {"bc": "models:/bc@champion"}
    assert job.output.path.startswith("/")
