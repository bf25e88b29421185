"""Run one command and report its wall time and peak memory (used by bench.py for every process).

    python measure_child.py RESULT.json -- COMMAND [ARG ...]

Writes ``{"wall_s", "cpu_s", "rc", "tree_rss", "maxrss"}`` to RESULT.json; the command's stdout and
stderr pass through. This small process is the command's parent, rather than bench.py itself,
because Linux carries a parent's RSS high-water mark over fork and exec into the child's
``ru_maxrss``: forked from the bench process (hundreds of MB, the table in memory), every child
would report at least that much.

- ``wall_s``: from just before the fork to ``wait4`` returning.
- ``cpu_s``: user + system CPU seconds of the command and the descendants it waited for
  (``wait4``'s rusage); less disturbed than wall time by other load on the machine.
- ``tree_rss``: peak of the RSS of the command and all its descendants summed, sampled every
  50 ms with psutil (shared pages count once per process).
- ``maxrss``: ``ru_maxrss`` from ``wait4`` on the command: the kernel's exact high-water mark of
  the largest single process among it and the descendants it waited for (not a sum), which
  includes this wrapper's own RSS (~20 MB) inherited at fork.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import psutil

POLL_S = 0.05


def main() -> int:
    result, sep, *cmd = sys.argv[1:]
    assert sep == "--" and cmd, __doc__
    peak = [0]
    done = threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for p in tree:
                with contextlib.suppress(psutil.Error):  # gone between listing and reading
                    total += p.memory_info().rss
            peak[0] = max(peak[0], total)
            done.wait(POLL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    with open(result, "w") as fh:
        json.dump(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "rc": rc,
                "tree_rss": peak[0],
                "maxrss": usage.ru_maxrss * 1024,
            },
            fh,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
