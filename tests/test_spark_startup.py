"""A stop during Spark's start-up stops the gateway JVM too: no process outlives the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from scoring.errors import ExitCode
from tests.conftest import spark_run_args

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _jvms(proc: psutil.Process) -> list[psutil.Process]:
    """The job's Java descendants; a short-lived child (a shell of spark-submit's) may end mid-look."""
    found = []
    for child in _descendants(proc):
        try:
            if "java" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.parametrize("delay", [0.0, 1.0, 3.0])
def test_sigterm_during_session_start_leaves_no_jvm(registry, tmp_path, delay):
    """SIGTERM ``delay`` seconds after the JVM process appears (it takes longer to be ready)."""
    env = {**os.environ, **registry.env(), "SCORING_CACHE_DIR": str(tmp_path / "cache")}
    env["SCORING_HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scoring.cli",
            *spark_run_args(
                registry.tables["gb"],
                str(tmp_path / "out"),
                "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t",
            ),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = psutil.Process(proc.pid)
    deadline = time.monotonic() + 300
    jvms: list[psutil.Process] = []
    while not jvms and time.monotonic() < deadline and proc.poll() is None:
        jvms = _jvms(job)
        time.sleep(0.05)
    assert jvms, "the job never started a JVM"
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.TERMINATED, err
    assert err.strip().splitlines()[-1] == "scoring: error: job stopped by SIGTERM; nothing was published"
    _, alive = psutil.wait_procs(jvms, timeout=30)
    assert alive == [], f"JVM left running after a stop {delay} s into start-up: {[p.pid for p in alive]}"
    assert not (tmp_path / "out").exists()
