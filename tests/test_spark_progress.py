"""Spark progress (issue 14): the stages of a Spark job on a terminal, in a plain log and in JSON logs.

Each Spark test runs the real CLI in its own process on a real local Spark (one session start each), over
a table of several files so that the write has several tasks and lasts a few seconds.
"""

from __future__ import annotations

import fcntl
import io
import itertools
import json
import logging
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring import progress
from scoring.errors import ExitCode
from tests.conftest import spark_run_args

FILES = 4
ROWS_PER_FILE = 50_000
ROWS = FILES * ROWS_PER_FILE
QUERY = "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t"
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STAGES = [
    "spark.session.started",
    "spark.table.opened",
    "spark.model.shipped",
    "spark.write.started",
    "spark.write.finished",
]


@pytest.fixture()
def _spark_available():
    pytest.importorskip("pyspark", reason="pyspark is not installed (the spark extra)")
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and shutil.which("java") is None:
        pytest.skip("no Java runtime (java on PATH or JAVA_HOME): the Spark engine cannot start")


def spark_test(test):
    """A test of the real CLI on a real local Spark: skipped with the reason where it cannot run."""
    return pytest.mark.spark(pytest.mark.slow(pytest.mark.usefixtures("_spark_available")(test)))


@pytest.fixture(scope="module")
def table(registry, tmp_path_factory) -> Path:
    """The gb case's rows repeated into FILES Parquet files of ROWS_PER_FILE rows each."""
    frame = registry.cases["gb"].frame
    folder = tmp_path_factory.mktemp("progress") / "t"
    folder.mkdir()
    repeats = -(-ROWS_PER_FILE // len(frame))
    for i in range(FILES):
        part = pd.concat([frame] * repeats, ignore_index=True).iloc[:ROWS_PER_FILE].copy()
        part["id"] = range(i * ROWS_PER_FILE, (i + 1) * ROWS_PER_FILE)
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{i}.parquet")
    return folder


def _command(table: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "scoring.cli", *spark_run_args(table, out, QUERY, *args)]


def _env(registry, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORING_")}
    env.update(registry.env(), SCORING_CACHE_DIR=str(tmp_path / "cache"), SCORING_HOME=str(tmp_path / "home"))
    env.update(extra)
    return env


def _run_on_a_terminal(cmd: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal, as in an interactive shell; return
    its exit code and everything the terminal received (the terminal's CR LF read as LF)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            pytest.fail(f"the job did not end in {timeout} s: {b''.join(chunks).decode(errors='replace')[-2000:]}")
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


@spark_test
def test_a_terminal_shows_each_stage_and_the_write_advancing(registry, table, tmp_path):
    code, screen = _run_on_a_terminal(_command(table, tmp_path / "out"), _env(registry, tmp_path))
    assert code == ExitCode.OK, screen
    summary = screen.index("model gb: models:/gb/1 sha256 ")  # the summary's first line (stdout)
    before = screen[:summary]
    # Each stage while it runs (its seconds ticking), then its line: the session, the table, the model.
    assert re.search(r"\r\S+ INFO starting the Spark session \.\.\. 1 s\x1b\[K", before), before
    assert re.search(r"\r\x1b\[K\S+ INFO Spark session started in \d+\.\d\d s\n", before), before
    assert re.search(r"\r\x1b\[K\S+ INFO table 't' opened in \d+\.\d\d s\n", before), before
    assert re.search(r"\r\S+ INFO shipping model 'gb' \(\d+\.\d kB\) to the executors \.\.\.\x1b\[K", before), before
    assert re.search(r"\r\x1b\[K\S+ INFO model 'gb' \(\d+\.\d kB\) shipped to the executors in \d+\.\d\d s\n", before)
    assert "INFO Spark write started: running the query and writing Parquet\n" in before
    # The write advancing, rewritten in place: a carriage return, the task counts, the rest of the line cleared.
    updates = re.findall(r"\r\S+ INFO Spark write: (\d+)/(\d+) tasks done[^\r\n]*, \d+ s\x1b\[K", before)
    assert any(int(total) > 0 for _, total in updates), before
    finished = re.search(
        rf"\r\x1b\[K\S+ INFO Spark write finished: (\d+)/(\d+) tasks done, {ROWS:,} rows written, \d+ s\n", before
    )
    assert finished and finished[1] == finished[2], before
    # Every live line is ended: the summary starts a line, and the output ends with a newline.
    assert before.endswith("\n") and screen.endswith("\n"), repr(screen[-300:])
    last = screen.rsplit("\n", 2)[-2]
    assert "\r" not in last and not ESCAPE.search(last), repr(last)
    assert f"wrote {ROWS:,} rows to" in screen[summary:]
    assert "\r" not in screen[summary:] and not ESCAPE.search(screen[summary:]), repr(screen[summary:])


@spark_test
def test_json_logs_have_one_event_per_stage_in_order(registry, table, tmp_path):
    proc = subprocess.run(
        _command(table, tmp_path / "out", "--log-format", "json"),
        env=_env(registry, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == ExitCode.OK, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is a JSON object
    events = [r["event"] for r in records if "event" in r]
    assert [e for e in events if e != "spark.write.progress"] == STAGES, events
    by_event = {r["event"]: r for r in records if "event" in r}
    assert by_event["spark.session.started"]["seconds"] > 0
    shipped = by_event["spark.model.shipped"]
    assert shipped["model"] == "gb" and shipped["bytes"] > 1000 and shipped["level"] == "info"
    finished = by_event["spark.write.finished"]
    # The write's own jobs (the write, and the count of the written footers), all done.
    assert finished["tasks_done"] == finished["tasks_total"] > 0, finished
    assert finished["tasks_running"] == 0
    assert finished["rows_written"] == ROWS, finished
    assert json.loads(proc.stdout)["rows"] == ROWS


@spark_test
def test_a_plain_log_has_a_line_per_stage_and_no_terminal_codes(registry, table, tmp_path):
    proc = subprocess.run(
        _command(table, tmp_path / "out"),
        env=_env(registry, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "\r" not in proc.stderr and not ESCAPE.search(proc.stderr), repr(proc.stderr)
    lines = [line.split(" ", 2)[2] for line in proc.stderr.splitlines()]
    stages = [line for line in lines if line.startswith(("Spark ", "model 'gb'", "table 't'"))]
    assert [re.sub(r"\d[\d,]*(\.\d+)?", "N", line) for line in stages if "Spark write: " not in line] == [
        "Spark session started in N s",
        "table 't' opened in N s",
        "model 'gb' (N kB) shipped to the executors in N s",
        "Spark write started: running the query and writing Parquet",
        "Spark write finished: N/N tasks done, N rows written, N s",
    ], stages
    assert not any("..." in line for line in lines)  # a stage under way is for terminals only
    # While the write runs, a progress line at most every 10 s (the log's times are to the second).
    times = [line.split(" ", 1)[0] for line in proc.stderr.splitlines() if " INFO Spark write: " in line]
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in (t.split(":") for t in times)]
    assert all(b - a >= 9 for a, b in itertools.pairwise(seconds)), times


@spark_test
def test_progress_off_logs_no_stage(registry, table, tmp_path):
    proc = subprocess.run(
        _command(table, tmp_path / "out", "--log-format", "json"),
        env=_env(registry, tmp_path, SCORING_PROGRESS="off"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == ExitCode.OK, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [r for r in records if "event" in r] == []
    assert json.loads(proc.stdout)["rows"] == ROWS


@spark_test
def test_a_connect_session_reports_its_stages_without_counts(registry, table, tmp_path, connect_server):
    """A Spark Connect client has no SparkContext, so no status tracker: stages only, no error."""
    proc = subprocess.run(
        _command(table, tmp_path / "out", "--log-format", "json"),
        env=_env(registry, tmp_path, SCORING_SPARK_REMOTE=connect_server),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [r["level"] for r in records] == ["info"] * len(records), records
    stages = [r for r in records if r.get("event", "").startswith("spark.") and r["event"] != "spark.write.progress"]
    assert [r["event"] for r in stages] == STAGES, records
    assert set(stages[-1]) == {"time", "level", "logger", "message", "event", "seconds"}, stages[-1]
    assert json.loads(proc.stdout)["rows"] == ROWS


def _records_of(handler: logging.Handler, body) -> None:
    log = logging.getLogger("scoring.progress")
    saved = log.level, log.handlers[:], log.propagate
    log.setLevel(logging.DEBUG)
    log.handlers[:] = [handler]
    log.propagate = False
    try:
        body()
    finally:
        log.level, log.handlers[:], log.propagate = saved[0], saved[1], saved[2]


def _failing_stage() -> None:
    with progress.shipping("gb", "/no/such/file.onnx"):
        raise ValueError("shipping failed")


def test_a_failed_stage_leaves_the_terminal_line_clear_and_no_line_elsewhere():
    screen, log = io.StringIO(), io.StringIO()
    terminal = progress.TerminalHandler(screen)
    plain = logging.StreamHandler(log)
    plain.addFilter(progress.LinesOnly())
    for handler in (terminal, plain):
        with pytest.raises(ValueError, match="shipping failed"):
            _records_of(handler, _failing_stage)
    assert screen.getvalue() == "\rshipping model 'gb' to the executors ...\x1b[K\r\x1b[K"
    assert log.getvalue() == ""


def test_the_write_stage_without_a_spark_context_reports_stages_and_leaves_no_thread():
    """What a Spark Connect session gets (no SparkContext, so no counts): the stages, no error."""

    def write() -> None:
        with progress.watch_write(object()):
            time.sleep(1.2)  # two refreshes of a terminal's line

    screen, log = io.StringIO(), io.StringIO()
    plain = logging.StreamHandler(log)
    plain.addFilter(progress.LinesOnly())
    _records_of(progress.TerminalHandler(screen), write)
    _records_of(plain, write)
    text = screen.getvalue()
    assert text.startswith("Spark write started: running the query and writing Parquet\n"), repr(text)
    assert "\rSpark write: 1 s\x1b[K" in text and text.endswith("\r\x1b[KSpark write finished: 1 s\n"), repr(text)
    assert log.getvalue() == "Spark write started: running the query and writing Parquet\nSpark write finished: 1 s\n"
    assert [t for t in threading.enumerate() if t.name == "scoring-progress"] == []
