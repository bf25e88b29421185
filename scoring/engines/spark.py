"""Spark engine: models as Arrow UDFs registered for Spark SQL, results as a Parquet folder.

Models reach executors through ``SparkContext.addFile`` (never a driver-local path);
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
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from scoring import publish, storage, types
from scoring.engines import ModelCatalog, check_sql_name, check_table_path
from scoring.errors import (
    EngineUnavailableError,
    InputDataError,
    OutputError,
    QueryError,
    ScoringError,
)
from scoring.model import Model
from scoring.registry import ModelRef
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


def start_session(master: str, app_name: str = "scoring", jvm_log: Path | None = None) -> Any:
    """Start (or get) a SparkSession configured for scoring.

    Args:
        master: Spark master URL.
        app_name: Application name shown by the cluster manager.
        jvm_log: File that receives the JVM's own output (None: inherit stdout/stderr).
    """
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
    try:
        with _jvm_output_to(jvm_log):
            spark = builder.getOrCreate()
    except Exception as exc:
        raise EngineUnavailableError(f"Spark could not start ({master}): {_first_line(exc)}") from None
    spark.sparkContext.setLogLevel("ERROR")
    # PySpark logs every analysis error with its JVM stack trace as JSON on stderr; the job
    # reports the error itself, in one line.
    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
    return spark


class _ShippedModel:
    """The picklable part of a model UDF: which file to fetch on the executor and how to load it."""

    def __init__(self, ref: ModelRef, threads: int, null: str, file_name: str, rows: Any) -> None:
        self.ref = replace(ref, path=Path(file_name))
        self.threads = threads
        self.null = null
        self.file_name = file_name
        self.rows = rows

    def model(self) -> Model:
        from pyspark import SparkFiles

        from scoring.cache import load_model

        local = replace(self.ref, path=Path(SparkFiles.get(self.file_name)))
        return load_model(local, self.threads, self.null)  # type: ignore[arg-type]

    def __call__(self, *columns: pa.Array) -> pa.Array:
        return self.model().predict(columns, self.rows.add)


class SparkEngine(ModelCatalog):
    """Run scoring queries on a SparkSession.

    Args:
        spark: The session to use (embedding), or None to start one on ``master``.
        master: Spark master URL when the engine starts its own session.
        resolve: Loads a model named by URI inside a query.
        null: Null policy applied on the executors.
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
    ) -> None:
        if spark is None:
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
            self.owned = spark is None
            self.spark = spark if spark is not None else start_session(master, jvm_log=jvm_log)
        else:
            self.owned = False
            self.spark = spark
        self.models: dict[str, Model] = {}
        self.uri_functions: dict[str, str] = {}
        self.rows: dict[str, Any] = {}
        self._resolve = resolve
        self._null = null
        self._shipped: set[str] = set()

    def register_model(self, name: str, model: Model) -> None:
        """Register ``model`` as the Spark SQL function ``name`` (an Arrow UDF)."""
        from pyspark.sql.functions import ArrowUDFType, arrow_udf

        check_sql_name(name, "model")
        sc = self.spark.sparkContext
        file_name = f"{model.ref.sha256}.onnx"
        if file_name not in self._shipped:
            staged = Path(model.ref.path)
            if staged.name != file_name:  # addFile ships by base name: make it content-addressed
                staged = Path(tempfile.mkdtemp(prefix="scoring-")) / file_name
                shutil.copyfile(model.ref.path, staged)
            with contextlib.suppress(Exception):  # already added in this SparkContext
                sc.addFile(str(staged))
            self._shipped.add(file_name)
        threads = int(self.spark.conf.get("spark.task.cpus", "1") or 1)
        rows = sc.accumulator(0)
        shipped = _ShippedModel(model.ref, threads, self._null, file_name, rows)
        with warnings.catch_warnings():  # the callable has no type hints to infer the UDF kind from
            warnings.simplefilter("ignore", UserWarning)
            udf = arrow_udf(shipped, types.spark_type(model.output_type), ArrowUDFType.SCALAR)
        # Nondeterministic keeps Spark from duplicating the call per struct field or into a
        # pushed-down filter: each row reaches the model once.
        self.spark.udf.register(name, udf.asNondeterministic())
        self.models[name] = model
        self.rows[name] = rows

    def register_table(self, name: str, path: str) -> None:
        """Expose Parquet at ``path`` (file, folder or glob) as a temporary view."""
        check_table_path(name, path)
        try:
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
        """Write the query's result as a Parquet folder published atomically at ``output``."""
        return write_folder(self.dataframe(sql), str(output), metadata, settings.mode, settings.compression)

    def rows_scored(self) -> dict[str, int]:
        """Rows each registered model has scored, summed by Spark accumulators over all tasks."""
        return {name: int(acc.value) for name, acc in self.rows.items()}

    def close(self) -> None:
        """Stop the session if the engine started it."""
        if self.owned:
            self.spark.stop()


def _query_error(exc: BaseException) -> ScoringError:
    message = _first_line(exc)
    if "TABLE_OR_VIEW_NOT_FOUND" in message:
        return InputDataError(message)
    return QueryError(message)


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
    df: Any, output: str, metadata: dict[str, Any], mode: str, compression: str, partition_by: list[str] | None = None
) -> int:
    """Write ``df`` as a Parquet folder published at ``output`` by :func:`scoring.publish.publish_folder`.

    ``output`` is a path or a Hadoop URI (``hdfs://``, ``s3a://``, ``abfss://``, ``file://``), passed to
    Hadoop unchanged; the publish goes through the session's Hadoop ``FileSystem``.
    Returns the number of rows, read from the Parquet footers (no second pass over data).
    """
    spark = df.sparkSession
    folders = publish.HadoopFolders(spark, output)
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
            # Stopped (SIGTERM) or failed: no task may go on writing into the folder removed after.
            with contextlib.suppress(Exception):
                spark.sparkContext.cancelAllJobs()
            if not isinstance(exc, Exception) or isinstance(exc, ScoringError):
                raise
            raise _scoring_error_in(exc) or QueryError(_first_line(exc)) from None
        return int(spark.read.parquet(tmp).count())  # footers only

    return publish.publish_folder(output, write, metadata, mode, folders)
