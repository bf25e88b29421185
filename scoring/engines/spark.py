"""Spark engine: models as SQL functions (Arrow or pandas UDFs), results as a Parquet folder.

Works on classic sessions (pyspark 3.5, 4.0, 4.1+) and on Spark Connect sessions. The UDFs
themselves live in :mod:`scoring.engines.spark_udfs`. Models reach executors through
``SparkContext.addFile`` or, on Connect, the artifact API (never a driver-local path);
each Python worker builds one onnxruntime session per model, kept by
:mod:`scoring.cache`, and reuses it across tasks. The alias was resolved on the
driver, so every executor scores the file with the pinned sha256. onnxruntime uses
``spark.task.cpus`` intra-op threads, without spinning, so concurrent tasks do not
oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from scoring import progress, publish, storage
from scoring.engines import ModelCatalog, check_sql_name, check_table_path
from scoring.engines.spark_udfs import ShippedModel, choose_kind, model_udf, require_pyspark
from scoring.errors import (
    EngineUnavailableError,
    InputDataError,
    ModelLoadError,
    OutputError,
    QueryError,
    ScoringError,
)
from scoring.java_errors import classify, root_cause
from scoring.model import Model
from scoring.sql.dialects import read_dialect

MANIFEST = "_scoring.json"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith(("JVM stacktrace", "\tat ")):
            return line.strip()
    return type(exc).__name__


def ensure_java() -> None:
    """Fail with the install command when no Java runtime is reachable."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return
    if shutil.which("java") is None:
        raise EngineUnavailableError(
            "the Spark engine needs a Java 17+ runtime: install it (apt-get install openjdk-17-jre-headless) "
            "or set JAVA_HOME"
        )


@contextlib.contextmanager
def _jvm_output_to(log: Path | None) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log`` while the JVM starts, so it inherits them.

    The JVM writes start-up chatter (module warnings, log4j banners) straight to the
    descriptors it inherits; a job's stderr is kept for the job's own one-line messages.
    """
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` is a Spark Connect session (a client without a JVM)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def shown_remote(remote: str) -> str:
    """A Connect URL as it may be logged: its parameters (``;token=...``) left out."""
    return remote.split(";", 1)[0].rstrip("/")


@progress.session_stage
def start_session(
    master: str, app_name: str = "scoring", jvm_log: Path | None = None, remote: str | None = None
) -> Any:
    """Start (or get) a SparkSession configured for scoring.

    Args:
        master: Spark master URL (not used with ``remote``).
        app_name: Application name shown by the cluster manager.
        jvm_log: File that receives the JVM's own output (None: inherit stdout/stderr).
        remote: A Spark Connect URL (``sc://host:port``): a client session, no local JVM.

    Raises:
        EngineUnavailableError: pyspark, Java or the Connect server is missing.
    """
    require_pyspark()
    if remote:
        return _connect(remote, app_name)
    ensure_java()
    # Executors must run the interpreter that has this package and onnxruntime.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # A local master needs no other interface; this also silences Spark's hostname warning.
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark.sql import SparkSession

    log4j = Path(__file__).with_name("log4j2.properties")
    java_options = f"-Dlog4j2.configurationFile={log4j.as_uri()}"

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.executor.extraJavaOptions", java_options)
    )
    before = _children()
    try:
        with _jvm_output_to(jvm_log):
            spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        _quiet_query_context_loggers()
        return spark
    except BaseException as exc:
        # A stop (SIGTERM) or failure half-way through start-up: the gateway JVM may be running
        # already, while pyspark has not yet recorded it anywhere that a later stop() reaches.
        _stop_new_children(before)
        if not isinstance(exc, Exception) or isinstance(exc, ScoringError):
            raise
        raise EngineUnavailableError(f"Spark could not start ({master}): {_first_line(exc)}") from None


def _children() -> set[int]:
    """Process ids of this process's children (Linux ``/proc``; empty elsewhere)."""
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(pid) for pid in (task / "children").read_text().split())
    return pids


def _stop_new_children(before: set[int], grace: float = 10.0) -> None:
    """Stop the processes started since ``before`` (the gateway JVM), SIGKILL after ``grace`` s."""
    started = _children() - before
    for pid in started:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while started and time.monotonic() < deadline:
        for pid in list(started):
            with contextlib.suppress(OSError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            started.discard(pid)  # reaped, or not ours to wait for any more
        time.sleep(0.1)
    for pid in started:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _connect(remote: str, app_name: str) -> Any:
    from pyspark.sql import SparkSession

    if not hasattr(SparkSession.builder, "remote"):
        import pyspark

        raise EngineUnavailableError(f"pyspark {pyspark.__version__} has no Spark Connect client (3.4+)")
    _check_reachable(remote)
    try:
        with warnings.catch_warnings():  # pyspark's advice about pandas 3 is not the job's output
            warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
            spark = SparkSession.builder.remote(remote).appName(app_name).getOrCreate()
            spark.version  # noqa: B018  (the client connects lazily: reach the server now, not mid-job)
    except ImportError:
        raise EngineUnavailableError(
            'the Spark Connect client needs its libraries: pip install "pyspark[connect]"'
        ) from None
    except Exception as exc:
        raise EngineUnavailableError(
            f"Spark Connect server {shown_remote(remote)} cannot be used: {_first_line(exc)}"
        ) from None
    _quiet_query_context_loggers()
    return spark


CONNECT_DEFAULT_PORT = 15002  # Spark Connect's own default, as the client assumes without a port
CONNECT_PROBE_SECONDS = 10.0


def _check_reachable(remote: str) -> None:
    """Fail at once when nothing listens at the Connect URL's address.

    The pyspark client retries a refused connection with exponential backoff for many minutes
    before it gives up, and its retry policy is not public API on every version; a job that is
    pointed at the wrong address should say so in seconds.
    """
    parts = urllib.parse.urlsplit(remote)
    try:
        host, port = parts.hostname or "localhost", parts.port or CONNECT_DEFAULT_PORT
    except ValueError:
        raise EngineUnavailableError(
            f"Spark Connect server {shown_remote(remote)} cannot be used: its URL has no valid port"
        ) from None
    try:
        socket.create_connection((host, port), timeout=CONNECT_PROBE_SECONDS).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EngineUnavailableError(
            f"Spark Connect server {shown_remote(remote)} cannot be used: {host}:{port} is unreachable "
            f"({reason}); check SCORING_SPARK_REMOTE and that the server runs"
        ) from None


def _quiet_query_context_loggers() -> None:
    """PySpark 4 logs every analysis error with its JVM stack trace as JSON on stderr; the job
    reports the error itself, in one line. PySpark 3.5 has no such logger."""
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:
        return
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


class SparkEngine(ModelCatalog):
    """Run scoring queries on a SparkSession, classic or Spark Connect.

    Args:
        spark: The session to use (embedding), or None to start one on ``master`` / ``remote``.
        master: Spark master URL when the engine starts its own classic session.
        resolve: Loads a model named by URI inside a query.
        null: Null policy applied on the executors.
        jvm_log: File for the JVM's own output when the engine starts a classic session.
        remote: Spark Connect URL: the engine starts a Connect client session instead.
        udf: UDF kind: ``auto`` (Arrow where pyspark has it, else pandas), ``arrow`` or ``pandas``.
    """

    name = "spark"
    dialect = "spark"

    def __init__(
        self,
        spark: Any = None,
        master: str = "local[2]",
        resolve: Callable[[str], Model] | None = None,
        null: str = "null",
        jvm_log: Path | None = None,
        remote: str | None = None,
        udf: str = "auto",
    ) -> None:
        require_pyspark()
        self.udf_kind = choose_kind(udf)  # a bad setting fails before a session starts
        if spark is None and remote:
            self.owned = True
            self.spark = start_session(master, remote=remote)
        elif spark is None:
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
            self.owned = spark is None
            self.spark = spark if spark is not None else start_session(master, jvm_log=jvm_log)
        else:
            self.owned = False
            self.spark = spark
        self.connect = is_connect(self.spark)
        self.models: dict[str, Model] = {}
        self.uri_functions: dict[str, str] = {}
        self.rows: dict[str, Any] = {}
        self._resolve = resolve
        self._null = null
        self._shipped: set[str] = set()

    def details(self) -> dict[str, Any]:
        """What the run manifest records about this engine: UDF kind and session kind."""
        return {"spark_udf": self.udf_kind, "spark_session": "connect" if self.connect else "classic"}

    def register_model(self, name: str, model: Model) -> None:
        """Register ``model`` as the Spark SQL function ``name`` (an Arrow or pandas UDF)."""
        check_sql_name(name, "model")
        with progress.shipping(name, model.ref.path):
            file_name = self._ship(model)
        threads = int(self.spark.conf.get("spark.task.cpus", "1") or 1)
        # Spark Connect has no accumulators: its rows are not counted (rows_scored says so).
        rows = None if self.connect else self.spark.sparkContext.accumulator(0)
        shipped = ShippedModel(model.ref, threads, self._null, file_name, rows)
        self.spark.udf.register(name, model_udf(shipped, model.output_type, self.udf_kind))
        self.models[name] = model
        self.rows[name] = rows

    def _ship(self, model: Model) -> str:
        """Send the model file to the executors under its content address; return that name.

        Classic sessions use ``SparkContext.addFile``, Connect sessions the artifact API
        (``addArtifacts(..., file=True)``); both are found on executors by ``SparkFiles.get``.
        """
        file_name = f"{model.ref.sha256}.onnx"
        if file_name in self._shipped:
            return file_name
        staged = Path(model.ref.path)
        if staged.name != file_name:  # both APIs ship by base name: make it content-addressed
            staged = Path(tempfile.mkdtemp(prefix="scoring-")) / file_name
            shutil.copyfile(model.ref.path, staged)
        try:
            if self.connect:
                self._add_artifact(staged)
            elif not any(Path(f).name == file_name for f in _listed_files(self.spark.sparkContext)):
                self.spark.sparkContext.addFile(str(staged))
        except Exception as exc:
            raise ModelLoadError(
                f"model '{model.name}' cannot be shipped to the Spark executors: {_first_line(exc)}"
            ) from None
        self._shipped.add(file_name)
        return file_name

    def _add_artifact(self, path: Path) -> None:
        from pyspark.errors import PySparkException

        try:
            self.spark.addArtifacts(str(path), file=True)
        except PySparkException as exc:
            # The name is the content's sha256: the same name already there is the same model.
            if _condition(exc) != "ARTIFACT_ALREADY_EXISTS":
                raise

    def register_table(self, name: str, path: str) -> None:
        """Expose Parquet at ``path`` (file, folder or glob) as a temporary view."""
        check_table_path(name, path)
        try:
            with progress.opening(name):
                self.spark.read.parquet(path).createOrReplaceTempView(name)
        except Exception as exc:
            raise InputDataError(f"table '{name}': cannot read Parquet at '{path}': {_first_line(exc)}") from None

    def schema(self, relation: exp.Expr) -> pa.Schema:
        """Arrow schema of a table or subquery, from Spark's analyzer (no rows scanned)."""
        from pyspark.sql.pandas.types import to_arrow_schema

        dialect = read_dialect("spark")
        sql = (
            relation.this.sql(dialect=dialect)
            if isinstance(relation, exp.Subquery)
            else exp.select("*").from_(relation).sql(dialect=dialect)
        )
        try:
            return to_arrow_schema(self.spark.sql(sql).schema)
        except Exception as exc:
            raise _query_error(exc) from None

    def run_statement(self, sql: str) -> None:
        """Run a script statement that creates a temp view or cached table (the SQL front built it)."""
        self.dataframe(sql)

    def columns(self, sql: str) -> list[str]:
        """Column names of a query as it returns them (repeats kept), from the analyzer."""
        return list(self.dataframe(sql).columns)

    def first_rows(self, sql: str, limit: int) -> list[tuple[Any, ...]]:
        """At most ``limit`` rows of a small query, such as a model-table subquery."""
        try:
            return [tuple(row) for row in self.dataframe(sql).limit(limit).collect()]
        except ScoringError:
            raise
        except Exception as exc:
            raise _query_error(exc) from None

    def dataframe(self, sql: str) -> Any:
        """The DataFrame of a compiled query (analysis errors raised as typed errors)."""
        try:
            return self.spark.sql(sql)
        except Exception as exc:
            raise _query_error(exc) from None

    def publish(
        self,
        sql: str,
        output: str,
        metadata: dict[str, Any],
        settings: Any,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Write the query's result as a Parquet folder published atomically at ``output``.

        On Spark Connect the server writes the parts and the client publishes them through
        pyarrow's filesystems (:class:`scoring.publish.ArrowFolders`), so ``output`` must be a
        store both can reach (a local server's disk, a shared mount, an object store).
        """
        df = self.dataframe(sql)
        metadata = {**metadata, **self.details()}
        with self._own_jobs() as cancel, progress.watch_write(self.spark, settings):
            return write_folder(df, output, metadata, settings.mode, settings.compression, cancel=cancel)

    @contextlib.contextmanager
    def _own_jobs(self) -> Iterator[Callable[[], None]]:
        """Run the block's Spark jobs under a job group (classic) or tag (Connect) of their own.

        Yields the function that cancels exactly those jobs: a stopped or failed write must not
        go on writing, and must not cancel the other jobs of a session it shares with its host.
        """
        tag = f"scoring-{uuid.uuid4().hex[:12]}"
        if self.connect:
            self.spark.addTag(tag)
            try:
                yield lambda: self.spark.interruptTag(tag)
            finally:
                self.spark.removeTag(tag)
            return
        sc = self.spark.sparkContext
        keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
        previous = {key: sc.getLocalProperty(key) for key in keys}
        sc.setJobGroup(tag, "scoring: write the result", interruptOnCancel=True)
        try:
            yield lambda: sc.cancelJobGroup(tag)
        finally:
            with contextlib.suppress(Exception):  # a stopped gateway: nothing left to restore
                for key, value in previous.items():
                    sc.setLocalProperty(key, value)

    def rows_scored(self) -> dict[str, int | None]:
        """Rows each registered model has scored, summed by Spark accumulators over all tasks.

        None for every model on Spark Connect, which has no accumulators: not counted.
        """
        return {name: int(acc.value) if acc is not None else None for name, acc in self.rows.items()}

    def close(self) -> None:
        """Stop the session if the engine started it."""
        if self.owned:
            self.spark.stop()


def _listed_files(sc: Any) -> list[str]:
    """Files already added to ``sc`` (``SparkContext.listFiles``, pyspark 3.4+)."""
    return list(getattr(sc, "listFiles", []) or [])


def _condition(exc: BaseException) -> str | None:
    """Spark's error condition (error class) of a pyspark exception, if it has one."""
    for method in ("getCondition", "getErrorClass"):  # getCondition: 4.0+; getErrorClass: 3.4+
        get = getattr(exc, method, None)
        if get is not None:
            with contextlib.suppress(Exception):
                return get()  # type: ignore[no-any-return]
    return None


def _query_error(exc: BaseException) -> ScoringError:
    message = _first_line(exc)
    if "TABLE_OR_VIEW_NOT_FOUND" in message:
        return InputDataError(message)
    return _java_error(exc) or QueryError(message)


def _java_error(exc: BaseException) -> ScoringError | None:
    """A bad input file or a failed write, told by Spark's error class and the innermost Java
    cause (:mod:`scoring.java_errors`); the py4j line on top ("An error occurred while calling
    o63.parquet.") says neither."""
    cause = root_cause(exc)
    if cause is None:
        return None
    family = classify(cause)
    if family == "input":
        return InputDataError(cause.describe())
    if family == "output":
        return OutputError(cause.describe())
    return None


def _scoring_error_in(exc: BaseException) -> ScoringError | None:
    """Executors raise our typed errors inside a Java stack trace; find them again by name."""
    text = str(exc)
    import scoring.errors as errors

    for match in re.finditer(r"scoring\.errors\.(\w+): (.+)", text):
        cls = getattr(errors, match[1], None)
        if isinstance(cls, type) and issubclass(cls, ScoringError):
            return cls(match[2].strip())
    for match in re.finditer(r"\b(\w+Error): (model '.+)", text):
        cls = getattr(errors, match[1], None)
        if isinstance(cls, type) and issubclass(cls, ScoringError):
            return cls(match[2].strip())
    return None


def write_folder(
    df: Any,
    output: str,
    metadata: dict[str, Any],
    mode: str,
    compression: str,
    partition_by: list[str] | None = None,
    cancel: Callable[[], None] | None = None,
) -> int:
    """Write ``df`` as a Parquet folder published at ``output`` by :func:`scoring.publish.publish_folder`.

    ``output`` is a path or a Hadoop URI (``hdfs://``, ``s3a://``, ``abfss://``, ``file://``), passed to
    Hadoop unchanged; the publish goes through the session's Hadoop ``FileSystem``.
    Returns the number of rows, read from the Parquet footers (no second pass over data).
    ``cancel`` stops the write's own Spark jobs when it fails or is stopped.
    """
    spark = df.sparkSession
    # A Spark Connect client has no JVM, so no Hadoop FileSystem: it publishes through pyarrow's
    # filesystems (the commit protocol on object stores), which must see what the server wrote.
    folders: publish.Folders = (
        publish.ArrowFolders(output) if is_connect(spark) else publish.HadoopFolders(spark, output)
    )
    if mode == "error" and folders.exists(output):
        raise OutputError(f"output '{storage.redact(output)}' already exists and the write mode is 'error'")
    if folders.is_file(output):
        raise OutputError(f"output '{storage.redact(output)}' is a file; expected the path of a folder")

    def write(tmp: str) -> int:
        writer = df.write.mode("error").option("compression", compression)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        try:
            writer.parquet(tmp)
        except BaseException as exc:
            # Stopped (SIGTERM) or failed: no task may go on writing into the folder removed below.
            if cancel is not None:
                with contextlib.suppress(Exception):
                    cancel()
            if not isinstance(exc, Exception) or isinstance(exc, ScoringError):
                raise
            raise _scoring_error_in(exc) or _java_error(exc) or QueryError(_first_line(exc)) from None
        return int(spark.read.parquet(tmp).count())  # footers only

    return publish.publish_folder(output, write, metadata, mode, folders)
