"""Fixtures: a real sqlite-backed MLflow registry with real skl2onnx models, DuckDB, Spark."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import models as M


@dataclass
class Registry:
    """The test registry: where it lives, and the cases registered in it."""

    tracking_uri: str
    home: Path
    cases: dict[str, M.Case]
    tables: dict[str, Path]

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "SCORING_HOME": str(self.home)}


def _write(frame, path: Path) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A sqlite registry holding: gb v1 (@champion), gb v2 (logistic, @challenger), churn, iris, reg."""
    import mlflow

    home = tmp_path_factory.mktemp("registry")
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.MlflowClient().create_experiment("tests", artifact_location=(home / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    cases = {
        "gb": M.gradient_boosting(),
        "churn": M.churn_pipeline(),
        "iris": M.zipmap_tree(),
        "reg": M.regressor(),
        "gb_v2": M.logistic(),
    }
    M.register(cases["gb"], "gb", aliases=("champion",))
    M.register(cases["gb_v2"], "gb", aliases=("challenger",))
    for key in ("churn", "iris", "reg"):
        M.register(cases[key], key)
    data = home / "data"
    data.mkdir()
    tables = {key: _write(case.frame, data / f"{key}.parquet") for key, case in cases.items() if key != "gb_v2"}
    yield Registry(tracking, home, cases, tables)
    mlflow.set_tracking_uri(previous or "")


@pytest.fixture()
def settings(registry: Registry, tmp_path: Path):
    """Settings pointing at the test registry, with a per-test model cache."""
    from scoring.settings import Settings

    return Settings(home=registry.home, tracking_uri=registry.tracking_uri, cache_dir=tmp_path / "cache")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 serving its own artifacts; yields its URL.

    The gradient-boosting case is registered through HTTP as ``gb`` (alias ``champion``),
    so its artifacts travel through the server (``mlflow-artifacts:/``), not the file system.
    """
    import mlflow

    root = tmp_path_factory.mktemp("server")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a loaded 2-core CI machine needs more than a minute
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not become healthy in 180 s")
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("served")
    M.register(registry.cases["gb"], "gb", aliases=("champion",))
    mlflow.set_tracking_uri(registry.tracking_uri)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def spark_ready():
    """A session-scoped local[2] SparkSession shared by every Spark test (and the engine)."""
    from scoring.engines.spark import start_session

    spark = start_session("local[2]", "scoring-tests")
    yield spark
    spark.stop()


def spark_run_args(
    table: Path | str, out: Path | str, query: str, *extra: str, model: str = "gb=models:/gb/1"
) -> list[str]:
    """The arguments of a ``scoring run --engine spark`` over one table ``t`` (after the program)."""
    return [
        "run",
        "--engine",
        "spark",
        "--model",
        model,
        "--table",
        f"t={table}",
        "--query",
        query,
        "--output",
        str(out),
        *extra,
    ]


def run_json_script(script: str, *argv: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run ``tests/<script>`` in a subprocess of its own (a Spark master or cluster of its own);
    return the process and the JSON report on the last line of its stdout (None if it failed)."""
    here = Path(__file__).parent
    proc = subprocess.run(
        [sys.executable, str(here / script), *argv], capture_output=True, text=True, timeout=600, cwd=here.parent
    )
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return proc, report


CONNECT_TOKEN = "connect-test-secret-7f3a"  # the local Connect server's token: never printed


def skip_without_a_connect_server() -> None:
    """Skip, with the reason, where pyspark has no Connect server or client libraries."""
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
    skip_without_a_connect_server()
    port = free_port()
    log = tmp_path_factory.mktemp("connect") / "server.log"
    env = {**os.environ, "SPARK_CONNECT_AUTHENTICATE_TOKEN": CONNECT_TOKEN}
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "spark_connect_server.py"), str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
            env=env,
            cwd=Path(__file__).parent.parent,
        )
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        line = proc.stdout.readline()  # "ready", or "" if it died
        if line.strip() != "ready":
            pytest.fail(f"Connect server did not start: {log.read_text()[-3000:]}")
        print(f"Connect server on port {port} ready in {time.monotonic() - started:.1f} s")
        yield f"sc://localhost:{port}/;token={CONNECT_TOKEN}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
