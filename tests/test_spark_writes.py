"""Spark writes: a failed write cancels only its own jobs, disk full is its own error, row groups."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.cli import main
from scoring.errors import ExitCode

pytestmark = pytest.mark.spark


def test_a_failed_write_leaves_the_hosts_other_jobs_running(registry, tmp_path, capsys, monkeypatch, spark_ready):
    """On a shared SparkContext, a scoring write that fails cancels its own job group only: a job
    the host started in another thread, running at that moment, completes."""
    sc = spark_ready.sparkContext
    release = tmp_path / "release"
    outcome: dict[str, object] = {}

    def wait_for_release(_: int) -> int:  # the user's task: runs until the test releases it
        import os
        import time

        deadline = time.monotonic() + 300
        while not os.path.exists(str(release)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return 1

    def user_job() -> None:
        try:
            outcome["result"] = sc.parallelize([0], 1).map(wait_for_release).sum()
        except Exception as exc:  # the job cancelled under it
            outcome["error"] = type(exc).__name__

    user = threading.Thread(target=user_job, daemon=True)
    user.start()
    deadline = time.monotonic() + 120
    while not sc.statusTracker().getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sc.statusTracker().getActiveJobsIds(), "the user's job did not start"

    frame = registry.cases["gb"].frame.copy()
    frame.loc[7, "f4"] = None
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), nulls)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out" / "scored"
    argv = ["run", "--engine", "spark", "--model", "gb=models:/gb/1", "--table", f"t={nulls}"]
    argv += ["--query", "SELECT id, gb(f0, f1, f2, f3, f4, f5) AS p FROM t", "--output", str(out), "--null", "error"]
    try:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == ExitCode.SCHEMA_MISMATCH, err
        assert user.is_alive() and "error" not in outcome, outcome  # still running after the failed write
    finally:
        release.touch()
        user.join(timeout=120)
    assert outcome == {"result": 1}
