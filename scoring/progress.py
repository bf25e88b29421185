"""Progress of a Spark job: its stages as log records, and a poller that follows the write.

A Spark job spends most of its time where the job prints nothing: starting the session, then
one long query-and-write. Each stage is a record of the ``scoring.progress`` logger that carries
a stable event name and its figures (:func:`event_fields`), so one stream serves every output:

========================  =================================================================
``spark.session.started`` the session is up (``seconds``)
``spark.table.opened``    a table's files are listed and its schema read (``table``,
                          ``seconds``)
``spark.model.shipped``   a model file is on the executors' file list (``model``, ``bytes``,
                          ``seconds``)
``spark.write.started``   the query and its Parquet write began
``spark.write.progress``  the write's own Spark jobs so far (``tasks_done``, ``tasks_total``,
                          ``tasks_running``, ``rows_written``, ``seconds``); every 10 s
``spark.write.finished``  the write and its publish ended (same figures)
========================  =================================================================

Records marked *transient* (a stage under way, and the progress between the 10-s ones) are
logged at DEBUG: :class:`TerminalHandler` shows them on one line updated in place, every other
handler drops them (:class:`LinesOnly`), so a CI log or a JSON log gets one line per stage and a
progress line every 10 s. An embedding program gets plain log records at that rate.

Task counts come from ``SparkContext.statusTracker()`` for the jobs of the write's job group only
(a shared session runs other jobs too). Rows written come from Spark's status store
(``AppStatusStore.lastStageAttempt(stage).outputRecords``, internal, reached through py4j; it
counts the rows of finished tasks), found by feature detection and left out where missing.
A Spark Connect session has neither: its stages are reported without counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("scoring.progress")

_EVENT = "scoring_event"
_FIELDS = "scoring_fields"
_TRANSIENT = "scoring_transient"
_ENDED = "scoring_ended"

# How often progress is logged as a line (CI logs, JSON, embedders), and how often a terminal's
# line is refreshed while the write runs.
LINE_INTERVAL = 10.0
LIVE_INTERVAL = 0.5
PROGRESS = "spark.write.progress"


def _emit(event: str, message: str, transient: bool = False, ended: bool = False, **fields: Any) -> None:
    extra = {_EVENT: event, _FIELDS: fields, _TRANSIENT: transient, _ENDED: ended}
    log.log(logging.DEBUG if transient else logging.INFO, message, extra=extra)


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``event`` name and figures of a progress record, as a JSON log line carries them;
    empty for any other record."""
    event = getattr(record, _EVENT, None)
    if event is None:
        return {}
    return {"event": event, **getattr(record, _FIELDS, {})}


def _is_transient(record: logging.LogRecord) -> bool:
    return bool(getattr(record, _TRANSIENT, False))


class LinesOnly(logging.Filter):
    """Drops the transient progress records: for any output that is not a terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_transient(record)


class TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A terminal's log: progress records on one line rewritten in place (carriage return),
    every other record on a line of its own, which first ends the live line.

    It writes to a copy of the terminal's descriptor: while the JVM starts, descriptor 2 points
    at Spark's log file (:func:`scoring.engines.spark.start_session`), and that stage's line must
    still reach the terminal. The live line is cut to the terminal's width: a wrapped line cannot
    be rewritten with ``\\r``.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.own: IO[str] | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no descriptor: the stream itself
            self.own = os.fdopen(os.dup(stream.fileno()), "w", encoding="utf-8", errors="replace")
        super().__init__(self.own or stream)
        self.live = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            in_place = _is_transient(record) or getattr(record, _EVENT, None) == PROGRESS
            if _is_transient(record):  # logged at DEBUG only to keep it off other outputs
                record = logging.makeLogRecord({**record.__dict__, "levelname": "INFO"})
            text = self.format(record)
            with self._line():
                if getattr(record, _ENDED, False):  # a stage that failed: its error line follows
                    self._clear()
                elif in_place:
                    self.stream.write("\r" + text.splitlines()[0][: self._width()] + "\x1b[K")
                    self.live = True
                else:
                    self._clear()
                    self.stream.write(text + "\n")
                self.flush()
        except Exception:
            self.handleError(record)

    def finish(self) -> None:
        """Clear a live line left open (before a line written without logging)."""
        with self._line():
            self._clear()
            self.flush()

    def close(self) -> None:
        """Close the handler and its copy of the terminal's descriptor."""
        with self._line():
            if self.own is not None:
                self.own.close()
                self.own = None
                self.stream = None  # type: ignore[assignment]
        super().close()

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.live = False

    def _width(self) -> int:
        columns = 0
        with contextlib.suppress(OSError, ValueError, AttributeError):
            columns = os.get_terminal_size(self.stream.fileno()).columns
        # A terminal that reports no size (a fresh pseudo-terminal): COLUMNS, else 80.
        return (columns or shutil.get_terminal_size().columns) - 1

    @contextlib.contextmanager
    def _line(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


class _Repeating:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread until :meth:`stop`, then the
    function it returns, which logs. ``tick`` does the slow part (a call into the JVM) unlocked,
    so ``stop`` never waits on it; once ``stop`` returns, nothing more is logged. An exception
    ends the thread only: progress is never the job's failure."""

    def __init__(self, tick: Callable[[], Callable[[], None]], interval: float) -> None:
        self.tick = tick
        self.interval = interval
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scoring-progress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                show = self.tick()
                with self.lock:
                    if self.stopped.is_set():
                        return
                    show()
            except Exception as exc:
                log.debug("Spark progress stopped: %s", exc)
                return

    def stop(self) -> None:
        with self.lock:  # waits for a line being logged, and none is logged after it
            self.stopped.set()
        self.thread.join(timeout=5)  # a JVM call under way ends by itself; the thread is a daemon


@contextlib.contextmanager
def _stage(starting: str, started: str, doing: str, done: str, **fields: Any) -> Iterator[None]:
    """A stage of the job: ``doing`` and its seconds so far on a terminal while it runs, then
    ``done`` with the seconds it took as a line everywhere. A failed stage leaves no line: the
    job's error follows."""
    began = time.perf_counter()
    _emit(starting, f"{doing} ...", transient=True, **fields)

    def tick() -> Callable[[], None]:
        message = f"{doing} ... {time.perf_counter() - began:.0f} s"
        return lambda: _emit(starting, message, transient=True, **fields)

    # Only a terminal shows the seconds ticking (it alone listens at DEBUG).
    ticker = _Repeating(tick, 1.0) if log.isEnabledFor(logging.DEBUG) else None
    try:
        yield
    except BaseException:
        if ticker is not None:
            ticker.stop()
        _emit(starting, f"{doing}: stopped", transient=True, ended=True, **fields)
        raise
    if ticker is not None:
        ticker.stop()
    seconds = round(time.perf_counter() - began, 3)
    _emit(started, f"{done} in {seconds:.2f} s", seconds=seconds, **fields)


def session_stage(fn: Any) -> Any:
    """Decorates the function that starts a Spark session: the start is a stage."""
    import functools

    @functools.wraps(fn)
    def start(*args: Any, **kwargs: Any) -> Any:
        with _stage(
            "spark.session.starting", "spark.session.started", "starting the Spark session", "Spark session started"
        ):
            return fn(*args, **kwargs)

    return start


def shipping(model: str, path: str | Path) -> contextlib.AbstractContextManager[None]:
    """The stage that ships the model bound to ``model`` (file at ``path``) to the executors."""
    try:
        size: int | None = Path(path).stat().st_size
    except OSError:
        size = None
    shown = f" ({_size(size)})" if size is not None else ""
    return _stage(
        "spark.model.shipping",
        "spark.model.shipped",
        f"shipping model '{model}'{shown} to the executors",
        f"model '{model}'{shown} shipped to the executors",
        model=model,
        bytes=size,
    )


def opening(table: str) -> contextlib.AbstractContextManager[None]:
    """The stage that opens the table bound to ``table`` (Spark lists its files and reads its
    schema; the first table also sets up the session's catalog, which takes seconds)."""
    return _stage(
        "spark.table.opening", "spark.table.opened", f"opening table '{table}'", f"table '{table}' opened", table=table
    )


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Counts:
    """The write's Spark jobs at one moment (the jobs of its job group)."""

    tasks_done: int
    tasks_total: int
    tasks_running: int
    rows_written: int | None  # None: this Spark's status store does not say
    running: bool  # a job of the group still runs


class _Tracker:
    """Reads the counts of one job group from the driver's status tracker (classic sessions)."""

    def __init__(self, sc: Any, group: str) -> None:
        self.status = sc.statusTracker()
        self.group = group
        self.store: Any = None
        with contextlib.suppress(Exception):  # internal API: feature-detected, rows left out without it
            self.store = sc._jsc.sc().statusStore()
            self.store.lastStageAttempt  # noqa: B018  (py4j raises here where the method is missing)

    def counts(self) -> Counts:
        done = total = running = rows = 0
        active = False
        for job_id in self.status.getJobIdsForGroup(self.group):
            job = self.status.getJobInfo(job_id)
            if job is None:
                continue
            finished = job.status != "RUNNING"
            active = active or not finished
            for stage_id in job.stageIds:
                stage = self.status.getStageInfo(stage_id)
                if stage is None or (finished and stage.numCompletedTasks == 0 and stage.numActiveTasks == 0):
                    continue  # a stage a finished job skipped (its shuffle output was reused)
                done += stage.numCompletedTasks
                total += stage.numTasks
                running += stage.numActiveTasks
                rows += self._rows(stage_id)
        return Counts(done, total, running, rows if self.store is not None else None, active)

    def _rows(self, stage_id: int) -> int:
        if self.store is None:
            return 0
        try:
            return int(self.store.lastStageAttempt(stage_id).outputRecords())
        except Exception:  # this Spark has no such store method: count tasks only from now on
            self.store = None
            return 0


def _describe(counts: Counts | None, seconds: float) -> str:
    if counts is None:  # Spark Connect: no counts to show
        return f"{seconds:.0f} s"
    if counts.tasks_total == 0:
        return f"no task started yet, {seconds:.0f} s"
    text = f"{counts.tasks_done}/{counts.tasks_total} tasks done"
    if counts.tasks_running:
        text += f", {counts.tasks_running} running"
    if counts.rows_written is not None:
        text += f", {counts.rows_written:,} rows written"
    return f"{text}, {seconds:.0f} s"


def _figures(counts: Counts | None, seconds: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"seconds": round(seconds, 3)}
    if counts is not None:
        figures.update({k: v for k, v in asdict(counts).items() if k != "running"})
    return figures


class _Poller:
    """Logs the write's counts while it runs: every :data:`LIVE_INTERVAL` seconds where a
    terminal shows them (transient records), a line every :data:`LINE_INTERVAL` seconds."""

    def __init__(self, tracker: _Tracker | None) -> None:
        self.tracker = tracker
        self.began = self.last_line = time.perf_counter()
        self.last: Counts | None = None
        # A terminal's line is refreshed often; anything else needs one poll per line.
        self.interval = LIVE_INTERVAL if log.isEnabledFor(logging.DEBUG) else LINE_INTERVAL
        self.thread = _Repeating(self.tick, self.interval)

    def tick(self) -> Callable[[], None]:
        counts = self.poll()
        now = time.perf_counter()
        line = now - self.last_line >= LINE_INTERVAL - self.interval / 2
        if line:
            self.last_line = now
        seconds = now - self.began
        message, figures = f"Spark write: {_describe(counts, seconds)}", _figures(counts, seconds)
        return lambda: _emit(PROGRESS, message, transient=not line, **figures)

    def poll(self) -> Counts | None:
        if self.tracker is None:
            return None
        try:
            self.last = self.tracker.counts()
        except Exception as exc:  # a stopped gateway, a changed API: progress is never the job's failure
            log.debug("Spark progress: the status tracker failed, counts no longer shown: %s", exc)
            self.tracker = None
        return self.last

    def stop(self) -> Counts | None:
        """Stop the thread; the counts once Spark's status listener has seen the last task end
        (it runs a little behind the job's own end), waiting for that at most a second."""
        self.thread.stop()
        deadline = time.perf_counter() + 1.0
        counts = self.poll()
        while counts is not None and counts.running and time.perf_counter() < deadline:
            time.sleep(0.05)
            counts = self.poll()
        return counts


def _group_of(spark: Any) -> tuple[Any, str] | None:
    """The SparkContext and the job group set in this thread, or None (Connect, no group)."""
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        return None  # a Connect client has no SparkContext, so no status tracker
    try:
        sc = spark.sparkContext
        group = sc.getLocalProperty("spark.jobGroup.id")
    except Exception:
        return None
    return (sc, group) if group else None


@contextlib.contextmanager
def watch_write(spark: Any, settings: Any = None) -> Iterator[None]:
    """The write stage: logs its start, its counts while it runs, and its end.

    Enter it inside the job group of the write's own jobs (only those are counted). Off when
    ``settings.progress`` is ``"off"`` or nothing listens to ``scoring.progress`` at INFO.
    """
    if getattr(settings, "progress", "auto") == "off" or not log.isEnabledFor(logging.INFO):
        yield
        return
    tracker = None
    found = _group_of(spark)
    if found is not None:
        with contextlib.suppress(Exception):
            tracker = _Tracker(*found)
    _emit("spark.write.started", "Spark write started: running the query and writing Parquet")
    poller = _Poller(tracker)
    try:
        yield
    except BaseException:
        poller.thread.stop()
        _emit(PROGRESS, "Spark write: stopped", transient=True, ended=True)
        raise
    counts = poller.stop()
    seconds = time.perf_counter() - poller.began
    _emit("spark.write.finished", f"Spark write finished: {_describe(counts, seconds)}", **_figures(counts, seconds))
