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


def _tmpfs_runner(tmp_path) -> list[str]:
    """A command prefix that runs a command with a 1 MiB tmpfs mounted on its first argument, in a
    mount namespace of its own (``unshare``), and then copies what the tmpfs holds to
    ``<argument>.after`` (the tmpfs is gone with the namespace); skips where this is not allowed."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("a full disk needs unshare(1) to mount a small tmpfs: not installed")
    script = 'mount -t tmpfs -o size=1m tmpfs "$0" || exit 97; "$@"; rc=$?; cp -a "$0" "$0.after"; exit $rc'
    prefix = [unshare, "-rm", "sh", "-c", script]
    probe = tmp_path / "probe"
    probe.mkdir()
    proc = subprocess.run([*prefix, str(probe), "true"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs in a user/mount namespace, refused here: {proc.stderr.strip()}")
    return prefix


def test_a_full_disk_is_an_output_error_in_its_own_line(registry, tmp_path):
    """Spark's "No space left on device" (a 1 MiB tmpfs under the output) is told by the Java cause
    chain: exit 10, one line that says the disk is full, nothing published."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    prefix = _tmpfs_runner(tmp_path)
    rows = 200_000
    big = tmp_path / "big.parquet"
    frame = {f"f{j}": np.random.default_rng(j).normal(size=rows) for j in range(6)}
    pq.write_table(pa.table({"id": np.arange(rows), **frame}), big)
    full = tmp_path / "full"
    full.mkdir()
    out = full / "scored"
    argv = ["run", "--engine", "spark", "--model", "gb=models:/gb/1", "--table", f"t={big}", "--output", str(out)]
    argv += ["--query", "SELECT *, gb(f0, f1, f2, f3, f4, f5).label AS p FROM t"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "MLFLOW_"))}
    env.update(registry.env(), SCORING_CACHE_DIR=str(tmp_path / "cache"), SCORING_HOME=str(tmp_path / "home"))
    command = [*prefix, str(full), sys.executable, "-m", "scoring.cli", *argv]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("scoring: ")]
    assert proc.returncode == ExitCode.OUTPUT, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"scoring: error: output '{out}': the disk is full (No space left on device"), lines
    after = full.with_name("full.after")  # the tmpfs as the job left it
    left = {p.name for p in after.iterdir()}
    assert left <= {"scored.failed.run.json"}, left  # no result, no temporary folder
    # The failed-run manifest is written where there is room: a task's deleted part file holds the
    # tmpfs full until the JVM has exited, so here it may be missing; where it is, it says exit 10.
    if left:
        assert json.loads((after / "scored.failed.run.json").read_text())["exit_code"] == ExitCode.OUTPUT


def test_row_groups_follow_the_setting(registry, settings, tmp_path, spark_ready):
    """SCORING_ROW_GROUP_ROWS bounds the row groups that Spark writes: exactly where parquet-java
    has a row limit (Spark 4.1+), roughly (a size in bytes) before."""
    import numpy as np

    from tests.engines import score

    frame = registry.cases["gb"].frame
    big = pa.Table.from_pandas(frame, preserve_index=False)
    big = pa.concat_tables([big] * 25)  # 10,000 rows
    big = big.set_column(big.schema.get_field_index("id"), "id", pa.array(np.arange(big.num_rows)))
    source = tmp_path / "big.parquet"
    pq.write_table(big, source)
    query = "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS p FROM t"
    out = tmp_path / "out"
    table, _ = score(settings, "spark", query, {"gb": "models:/gb/1"}, {"t": source}, out, row_group_rows=1024)
    assert table.num_rows == big.num_rows
    exact = _has_row_limit(spark_ready, "parquet.block.row.count.limit")
    for part in sorted(out.glob("*.parquet")):
        meta = pq.ParquetFile(part).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if exact:
            assert sizes and all(n == 1024 for n in sizes[:-1]) and 0 < sizes[-1] <= 1024, (part.name, sizes)
        else:
            assert meta.num_rows <= 1024 or len(sizes) > 1, (part.name, sizes)


def _has_row_limit(spark, key: str) -> bool:
    try:
        return key == spark.sparkContext._jvm.org.apache.parquet.hadoop.ParquetOutputFormat.BLOCK_ROW_COUNT_LIMIT
    except Exception:
        return False
