"""Secrets, hostile registries, hostile queries and hostile files (issue 11), against real parts:
a real ``mlflow server``, real loopback HTTP servers, real DuckDB, real files and devices."""

from __future__ import annotations

import http.server
import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.errors import ExitCode
from tests.conftest import free_port
from tests.test_errors import GB_QUERY, error_line
from tests.test_errors import cli as errors_cli  # noqa: F401  (a fixture, used as `cli` below)


@pytest.fixture()
def cli(errors_cli):  # noqa: F811  (the imported fixture, by its pytest name)
    """test_errors' in-process ``scoring run``: (exit code, stderr, output path)."""
    return errors_cli


SECRET = "s3cr3t-Pa55-do-not-print"
TOKEN = "tok-9f8e7d6c5b4a-do-not-print"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "MLFLOW_"))}
    env.update(extra)
    return env


def _scoring(*args: str, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoring.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _everything_written(folder: Path) -> str:
    """Every byte under ``folder`` as text (manifests, Parquet files and their metadata)."""
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


# -- 1. a password in the tracking URI ---------------------------------------------------------


def test_a_registry_password_is_never_printed_or_stored(registry, mlflow_server, tmp_path):
    """user:password@ in MLFLOW_TRACKING_URI: not in stderr (with --debug), manifests, Parquet
    metadata or inspect output; for a served model, an unknown one and a dead registry."""
    host = mlflow_server.removeprefix("http://")
    with_secret = f"http://scorer:{SECRET}@{host}"
    out = tmp_path / "out" / "scored.parquet"
    env = _clean_env(
        MLFLOW_TRACKING_URI=with_secret,
        SCORING_CACHE_DIR=str(tmp_path / "cache"),
        SCORING_REGISTRY_RETRIES="0",
        SCORING_HOME=str(tmp_path / "home"),
    )
    run = ["run", "--dialect", "tsql", "--table", f"t={registry.tables['gb']}", "--query", GB_QUERY]
    ok = _scoring(*run, "--model", "gb=models:/gb@champion", "--output", str(out), "--debug", env=env)
    assert ok.returncode == 0, ok.stderr
    missing = _scoring(*run, "--model", "gb=models:/nope/1", "--output", str(out), "--debug", env=env)
    assert missing.returncode == ExitCode.MODEL_NOT_FOUND, missing.stderr
    assert "http://***@" in missing.stderr and "Traceback" in missing.stderr
    dead = dict(env, MLFLOW_TRACKING_URI=f"http://scorer:{SECRET}@127.0.0.1:{free_port()}")
    gone = _scoring(*run, "--model", "gb=models:/gb/7", "--output", str(out), "--debug", env=dead)
    assert gone.returncode == ExitCode.REGISTRY_UNAVAILABLE, gone.stderr
    shown = _scoring("models", "inspect", "models:/gb@champion", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["pinned_uri"] == "models:/gb/1"
    for proc in (ok, missing, gone, shown):
        assert SECRET not in proc.stdout + proc.stderr
    written = _everything_written(out.parent)
    assert "scored.parquet.failed.run.json" in {p.name for p in out.parent.iterdir()}
    assert "gb" in written and SECRET not in written
    assert SECRET not in _everything_written(tmp_path / "cache")


# -- 2 and 4. what a registry (or something else) answers --------------------------------------


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request as the class attributes say, echoing the Authorization header."""

    status = 200
    content_type = "text/html"
    body = "<html>login</html>"
    location = ""

    def do_GET(self) -> None:
        if self.path.startswith("/login"):
            self._send(200, "text/html", "<html><form>sign in</form></html>")
            return
        body = self.body.replace("{auth}", self.headers.get("Authorization", ""))
        self._send(self.status, self.content_type, body)

    do_POST = do_GET

    def _send(self, status: int, kind: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if self.location and status in (301, 302, 303, 307):
            self.send_header("Location", self.location)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def answering(monkeypatch) -> Iterator[callable]:
    """Start a loopback HTTP server answering as told; point MLflow at it; yield a setter."""
    servers = []

    def start(status: int, content_type: str, body: str, location: str = "") -> str:
        handler = type("H", (_Answer,), {"status": status, "content_type": content_type, "body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        handler.location = url + location if location else ""
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        return url

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


ECHO = "<html>proxy says: you sent {auth}</html>"


@pytest.mark.parametrize(
    ("status", "kind", "body", "location", "code", "message"),
    [
        (401, "text/html", ECHO, "", ExitCode.AUTHENTICATION, r"HTTP 401 UNAUTHENTICATED; check the credentials"),
        (403, "text/plain", ECHO, "", ExitCode.AUTHENTICATION, r"HTTP 403 PERMISSION_DENIED"),
        (
            401,
            "application/json",
            '{"error_code": "UNAUTHENTICATED", "message": "token {auth} is invalid"}',
            "",
            ExitCode.AUTHENTICATION,
            r"HTTP 401 UNAUTHENTICATED",
        ),
        (200, "text/html", ECHO, "", ExitCode.CONFIG, r"is not an MLflow registry: .*check the tracking URI"),
        (302, "text/html", "", "/login?next=x", ExitCode.CONFIG, r"is not an MLflow registry: it redirects"),
        (404, "text/html", ECHO, "", ExitCode.CONFIG, r"is not an MLflow registry"),
        (503, "text/html", ECHO, "", ExitCode.REGISTRY_UNAVAILABLE, r"retry later"),
        (
            500,
            "application/json",
            '{"error_code": "INTERNAL_ERROR", "message": "db down, {auth}"}',
            "",
            ExitCode.REGISTRY_UNAVAILABLE,
            r"retry later",
        ),
    ],
)
def test_registry_answers_are_mapped_by_status_and_code(
    cli, answering, monkeypatch, status, kind, body, location, code, message
):
    """Never "model not registered" for a refused login; never the server's body verbatim."""
    answering(status, kind, body, location)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    got, err, out = cli(models=("gb=models:/gb@champion",))
    line = error_line(err)
    assert got == code, err
    assert re.search(message, line), line
    assert TOKEN not in err and "not registered" not in line
    failed = out.parent / f"{out.name}.failed.run.json"
    assert TOKEN not in failed.read_text() and json.loads(failed.read_text())["exit_code"] == code


def test_a_missing_model_on_a_real_server_is_still_exit_4(cli, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    got, err, _ = cli(models=("gb=models:/nosuch/1",))
    assert got == ExitCode.MODEL_NOT_FOUND and "is not registered" in error_line(err)


# -- 3. the job's SQL reaches only what the job was given -------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "SELECT * FROM read_text('/proc/self/environ')",
        "SELECT * FROM read_csv('/etc/passwd', sep = ':')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM glob('/root/*')",
        "SELECT t.id, e.* FROM t, read_text('/proc/self/environ') AS e",
    ],
)
def test_duckdb_sql_cannot_read_the_host(cli, hostile):
    code, err, out = cli()
    assert code == ExitCode.OK, err
    before = out.read_bytes()
    code, err, _ = cli(query=hostile, dialect="duckdb")
    assert code == ExitCode.QUERY, err
    assert "query refused" in error_line(err) and "PATH=" not in err
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 42 AS x) TO '{tmp}/copied.csv'",
        "ATTACH '{tmp}/attached.db' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "EXPORT DATABASE '{tmp}/exported'",
        "SET enable_external_access = true",
        "SET threads = 1",
        "RESET lock_configuration",
    ],
)
def test_a_job_engine_refuses_host_statements_itself(statement, tmp_path):
    """The engine half, whatever the SQL front lets through: a job's DuckDB connection is sealed."""
    import duckdb

    from scoring.engines.duckdb import DuckDBEngine

    engine = DuckDBEngine()
    try:
        with pytest.raises(duckdb.Error):
            engine.con.execute(statement.format(tmp=tmp_path))
        assert engine.con.execute("SELECT current_setting('enable_external_access')").fetchall() == [(False,)]
    finally:
        engine.close()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "statement", ["COPY t TO '{tmp}/copied.csv'", "ATTACH '{tmp}/attached.db' AS other", "SET threads = 1"]
)
def test_host_statements_in_a_job_publish_nothing(cli, statement, tmp_path):
    code, err, out = cli()
    assert code == ExitCode.OK, err
    before = out.read_bytes()
    code, err, _ = cli(query=statement.format(tmp=tmp_path), dialect="duckdb")
    assert code == ExitCode.QUERY, err
    error_line(err)
    assert out.read_bytes() == before
    assert not (tmp_path / "copied.csv").exists() and not (tmp_path / "attached.db").exists()


def test_host_access_opt_in_lets_trusted_sql_read_files(cli, monkeypatch, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("trusted")
    monkeypatch.setenv("SCORING_HOST_ACCESS", "true")
    code, err, out = cli(query=f"SELECT content FROM read_text('{note}')", dialect="duckdb")
    assert code == ExitCode.OK, err
    assert pq.read_table(out).column("content").to_pylist() == ["trusted"]


@pytest.mark.parametrize(
    "hostile",
    [
        "SELECT * FROM csv.`/etc/passwd`",
        "SELECT java_method('java.lang.System', 'getenv', 'PATH') AS e FROM t",
        "SELECT reflect('java.lang.System', 'getenv', 'PATH') AS e FROM t",
        "SELECT d.id FROM t AS d JOIN text.`/proc/self/environ` AS e ON true",
    ],
)
def test_spark_sql_cannot_reach_the_host(cli, hostile, tmp_path):
    """Refused before a JVM starts (or any registry call), so no Java is needed to test it."""
    previous = tmp_path / "spark-out"
    previous.mkdir()
    (previous / "part-0.parquet").write_bytes(b"the previous result")
    code, err, _ = cli("--engine", "spark", "--output", str(previous), query=hostile, dialect="spark")
    assert code == ExitCode.QUERY, err
    assert re.search(r"query refused: .*host_access = true", error_line(err))
    assert [p.name for p in previous.iterdir()] == ["part-0.parquet"]
    assert (previous / "part-0.parquet").read_bytes() == b"the previous result"


# -- 6. names that differ only in case -----------------------------------------------------------


@pytest.mark.parametrize(
    ("models", "tables"),
    [
        (("gb=models:/gb/1", "GB=models:/gb/2"), None),
        (("gb=models:/gb/1",), ("t=A.parquet", "T=B.parquet")),
    ],
)
def test_names_that_differ_only_in_case_are_refused(cli, registry, models, tables):
    tables = tables and tuple(t.replace("A.parquet", str(registry.tables["gb"])) for t in tables)
    code, err, out = cli(models=models, tables=tables)
    assert code == ExitCode.USAGE
    assert "SQL reads" in error_line(err) and not out.exists()


# -- 8. a float64 beyond float32 ---------------------------------------------------------------


def test_a_float64_beyond_float32_is_an_input_error(cli, registry, tmp_path):
    frame = registry.cases["gb"].frame.copy()
    frame.loc[3, "f2"] = 1e39
    table = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), table)
    code, err, out = cli("--log-format", "json", tables=(f"t={table}",))
    assert code == ExitCode.INPUT_DATA, err
    records = [json.loads(line) for line in err.splitlines()]  # no raw library line among them
    assert records[-1]["exit_code"] == ExitCode.INPUT_DATA
    assert re.search(r"input 'f2' is float32, but received 1e\+39, outside its range", records[-1]["message"])
    assert "RuntimeWarning" not in err and "overflow" not in err.lower()
    assert not out.exists()


# -- 9, 10. hostile model files ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_device_or_fifo_is_not_a_model(cli, tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    for source in ("/dev/zero", str(fifo)):
        code, err, _ = cli(models=(f"gb={source}",))
        assert code == ExitCode.MODEL_LOAD, err
        assert "is not a regular file" in error_line(err)


def test_the_model_size_limit(cli, registry, monkeypatch, tmp_path):
    monkeypatch.setenv("SCORING_MODEL_MAX_BYTES", "1000")
    code, err, _ = cli()
    assert code == ExitCode.MODEL_LOAD, err
    assert "over the limit of 1,000 bytes (SCORING_MODEL_MAX_BYTES)" in error_line(err)


def test_nothing_but_onnx_lands_in_the_cache(cli, tmp_path):
    code, err, _ = cli(models=("gb=/proc/self/environ",))
    assert code == ExitCode.MODEL_LOAD, err
    assert "is not an ONNX model" in error_line(err)
    blobs = tmp_path / "cache" / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())


@pytest.mark.parametrize("named", ["../../../etc/passwd", "/etc/passwd"])
def test_an_mlmodel_cannot_name_files_outside_its_folder(cli, registry, tmp_path, named):
    from scoring.registry import Registry

    source = Registry(registry.tracking_uri, tmp_path / "c").resolve("models:/gb/1")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(source.path.read_bytes())
    (folder / "MLmodel").write_text(f"flavors:\n  onnx:\n    data: {named}\n")
    code, err, _ = cli(models=(f"gb={folder}",))
    assert code == ExitCode.MODEL_LOAD, err
    assert "outside the artifact folder" in error_line(err)


# -- 12, 16. the shared cache ---------------------------------------------------------------------


def test_cache_is_group_shared_whatever_the_umask(registry, tmp_path):
    from scoring.registry import Registry

    old = os.umask(0o077)
    try:
        ref = Registry(registry.tracking_uri, tmp_path / "cache").resolve("models:/gb@champion")
    finally:
        os.umask(old)
    for folder in (tmp_path / "cache", tmp_path / "cache" / "blobs", tmp_path / "cache" / "refs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o2775, folder
    assert stat.S_IMODE(ref.path.stat().st_mode) == 0o664
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in (tmp_path / "cache" / "refs").iterdir())


def test_a_cache_that_cannot_be_created_is_a_config_error_with_the_fix(cli, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SCORING_CACHE_DIR", str(blocker / "cache"))
    code, err, _ = cli()
    assert code == ExitCode.CONFIG, err
    assert re.search(r"model cache '.*' cannot be created: .*set SCORING_CACHE_DIR", error_line(err))


# -- 17, 18, 21. embedding -----------------------------------------------------------------------


def test_registering_twice_on_one_connection_replaces_the_function(registry, settings, caplog):
    import duckdb

    import scoring

    con = duckdb.connect()
    con.execute("CREATE TABLE x AS SELECT 1.0::DOUBLE AS f0, 2.0 AS f1, 3.0 AS f2, 4.0 AS f3, 5.0 AS f4, 6.0 AS f5")
    scoring.register(con, {"gb": "models:/gb/1"}, settings=settings)
    first = con.execute("SELECT gb(f0, f1, f2, f3, f4, f5).probability FROM x").fetchall()
    with caplog.at_level("INFO", logger="scoring"):
        scoring.register(con, {"gb": "models:/gb/2"}, settings=settings)
    second = con.execute("SELECT gb(f0, f1, f2, f3, f4, f5).probability FROM x").fetchall()
    assert first != second  # version 2 is another estimator
    assert "replaced" in caplog.text


def test_embedding_leaves_the_host_environment_alone(registry, tmp_path):
    """import scoring + register(): no MLFLOW_HTTP_REQUEST_* (or any other) variable changes."""
    model = tmp_path / "gb.onnx"
    from scoring.registry import Registry

    model.write_bytes(Registry(registry.tracking_uri, tmp_path / "c").resolve("models:/gb/1").path.read_bytes())
    code = (
        "import os, duckdb, scoring; before = dict(os.environ); "
        f"scoring.register(duckdb.connect(), {{'gb': {str(model)!r}}}); "
        "print(sorted(k for k in set(os.environ) ^ set(before)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(SCORING_CACHE_DIR=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_local_mlflow_model_folder_is_named_after_the_folder(registry, tmp_path):
    import mlflow

    from scoring.registry import Registry

    downloaded = mlflow.artifacts.download_artifacts(
        artifact_uri=mlflow.MlflowClient(registry.tracking_uri).get_model_version_download_uri("churn", "1"),
        dst_path=str(tmp_path / "download"),
        tracking_uri=registry.tracking_uri,
    )
    folder = Path(downloaded).rename(tmp_path / "churn_model")
    assert (folder / "MLmodel").is_file()
    assert Registry(registry.tracking_uri, tmp_path / "cache").resolve(str(folder)).name == "churn_model"


# -- 15. an empty file in a table folder ---------------------------------------------------------


def test_a_zero_byte_parquet_file_is_an_input_error(cli, registry, tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    pq.write_table(pq.read_table(registry.tables["gb"]), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"")
    code, err, out = cli(tables=(f"t={folder}",))
    assert code == ExitCode.INPUT_DATA, err
    assert "part-1.parquet is empty (0 bytes)" in error_line(err)
    assert not out.exists()


def test_overflow_check_keeps_inf_and_nan(registry, settings):
    """inf and NaN are values, not overflows: they still reach the model."""
    from scoring.cache import load_model

    ref = (
        __import__("scoring.registry", fromlist=["Registry"])
        .Registry(registry.tracking_uri, settings.resolved_cache_dir())
        .resolve("models:/reg/1")
    )
    model = load_model(ref, 1)
    cols = [pa.array([np.inf, np.nan, 1.0])] + [pa.array([0.0, 0.0, 0.0])] * 4
    assert len(model.predict(cols)) == 3


# -- 5. the root cause of a Spark failure, from the Java exception chain ------------------------


def test_the_java_root_cause_of_a_corrupt_table_is_an_input_error(spark_ready, tmp_path):
    """A corrupt Parquet footer: Spark's error class and the innermost Java cause say so; the
    py4j line ("An error occurred while calling o63.parquet.") says nothing."""
    from scoring.java_errors import classify, root_cause

    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"\x10\x00\x00\x00PAR1")
    with pytest.raises(Exception) as info:
        spark_ready.read.parquet(str(folder)).collect()
    cause = root_cause(info.value)
    assert cause is not None, repr(info.value)
    assert classify(cause) == "input", cause
    assert "An error occurred while calling" not in cause.describe()
