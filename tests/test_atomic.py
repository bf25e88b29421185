"""A job killed or stopped mid-write never leaves a torn file at the output path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.errors import ExitCode


@pytest.fixture(scope="module")
def big_table(registry, tmp_path_factory) -> Path:
    """The gradient-boosting rows repeated to 3M rows: long enough to interrupt mid-write."""
    base = pa.Table.from_pandas(registry.cases["gb"].frame, preserve_index=False)
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    with pq.ParquetWriter(path, base.schema) as writer:
        for _ in range(3_000_000 // base.num_rows):
            writer.write_table(base)
    return path


def _job(registry, table: Path, out: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **registry.env(),
        "SCORING_CACHE_DIR": str(tmp_path / "cache"),
        "SCORING_ROW_GROUP_ROWS": "16384",
        "SCORING_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "scoring.cli",
        "run",
        "--model",
        "gb=models:/gb/1",
        "--table",
        f"t={table}",
        "--query",
        "SELECT id, gb(f0, f1, f2, f3, f4, f5) AS s FROM t",
        "--output",
        str(out),
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_partial(out: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partial = [p for p in out.parent.glob(f".{out.name}.tmp-*") if p.stat().st_size > 0]
        if partial:
            return partial[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the job never started writing")


def _previous_result(registry, out: Path, tmp_path: Path) -> bytes:
    proc = _job(registry, registry.tables["gb"], out, tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_job_leaves_the_previous_result(registry, big_table, tmp_path, sig):
    out = tmp_path / "out" / "scored.parquet"
    previous = _previous_result(registry, out, tmp_path)
    proc = _job(registry, big_table, out, tmp_path)
    _wait_for_partial(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert out.read_bytes() == previous
    assert pq.read_table(out).num_rows == len(registry.cases["gb"].frame)
    if sig == signal.SIGTERM:
        assert proc.returncode == ExitCode.TERMINATED, err
        assert "stopped by SIGTERM; nothing was published" in err
        assert "Traceback" not in err
        # the temporary file is gone; a failed-run manifest records the stop, beside the intact
        # manifest of the result still in place
        names = sorted(p.name for p in out.parent.iterdir())
        assert names == ["scored.parquet", "scored.parquet.failed.run.json", "scored.parquet.run.json"]
        manifest = json.loads((out.parent / "scored.parquet.failed.run.json").read_text())
        assert manifest["status"] == "failed" and manifest["exit_code"] == ExitCode.TERMINATED
        assert json.loads((out.parent / "scored.parquet.run.json").read_text())["status"] == "succeeded"
    else:
        assert proc.returncode == -signal.SIGKILL


def test_a_folder_result_is_replaced_in_one_step(tmp_path):
    """The folder publish (Spark's): the new folder takes the old one's place by an atomic swap."""
    from scoring.publish import _exchange, publish_folder

    output = tmp_path / "scored"
    output.mkdir()
    (output / "part-0.parquet").write_text("old")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.write_text("b")
    assert _exchange(str(a), str(b)) and a.is_file() and b.is_dir()  # renameat2 works on this file system

    def write(tmp: str) -> int:
        Path(tmp).mkdir()
        (Path(tmp) / "part-0.parquet").write_text("new")
        return 1

    assert publish_folder(str(output), write, {"engine": "test"}, "overwrite") == 1

    assert (output / "part-0.parquet").read_text() == "new"
    manifest = json.loads((output / "_scoring.json").read_text())
    assert manifest["files"] == ["part-0.parquet"] and manifest["status"] == "committed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "scored"]  # nothing left beside it


@pytest.mark.spark
def test_sigterm_stops_a_spark_job_cleanly(registry, big_table, tmp_path):
    """The Spark engine: exit 143, one line, the previous folder intact, no temporary folder left."""
    out = tmp_path / "out" / "scored"
    first = _job(registry, registry.tables["gb"], out, tmp_path, "--engine", "spark")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    previous = sorted(p.name for p in out.iterdir())
    proc = _job(registry, big_table, out, tmp_path, "--engine", "spark")
    deadline = time.monotonic() + 240
    while not list(out.parent.glob(".scored.tmp-*")):  # Spark has started writing the new result
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.TERMINATED, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "scoring: error: job stopped by SIGTERM; nothing was published", err
    assert "Traceback" not in err and "Logging error" not in err, err
    assert sorted(p.name for p in out.iterdir()) == previous
    assert pq.read_table(out).num_rows == len(registry.cases["gb"].frame)
    assert sorted(p.name for p in out.parent.iterdir()) == ["scored", "scored.failed.run.json", "scored.run.json"]
