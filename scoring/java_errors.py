"""The root cause of a Spark failure, read from the Java exception chain (never from ``str(exc)``).

A failed Spark action reaches Python as ``Py4JJavaError`` ("An error occurred while calling
o63.parquet.") or as a PySpark ``CapturedException``; what went wrong ("No space left on
device", a corrupt footer) sits further down the Java ``getCause()`` chain. :func:`root_cause`
walks it and returns Spark's error class (its *condition* from Spark 4.0 on) and the innermost
cause's class and message; :func:`classify` maps those to the exit-code family. The Spark engine
calls them when it translates an error (hook: ``scoring.engines.spark``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scoring.redact import short

# Spark error classes (conditions) by family; a prefix matches its sub-classes (FAILED_READ_FILE.*).
_INPUT_CLASSES = ("FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER", "PATH_NOT_FOUND", "UNABLE_TO_INFER_SCHEMA")
_OUTPUT_CLASSES = ("TASK_WRITE_FAILED", "CANNOT_WRITE", "PATH_ALREADY_EXISTS")
# Java classes of causes, by family.
_INPUT_CAUSES = (
    "org.apache.parquet.io.ParquetDecodingException",
    "org.apache.parquet.io.ParquetFileFormatException",
    "java.io.FileNotFoundException",
    "java.io.EOFException",
    "org.apache.spark.sql.execution.datasources.SchemaColumnConvertNotSupportedException",
)
_OUTPUT_CAUSES = ("java.nio.file.FileSystemException", "org.apache.hadoop.fs.FileAlreadyExistsException")
# A full disk or quota: Java reports the OS error (ENOSPC, EDQUOT) as an IOException whose message is
# the C library's text for it (java.nio puts that text in FileSystemException.getReason()); Hadoop's
# local file system may wrap it (FSError) on the way up. The class and message of the cause tell it.
_DISK_FULL_CLASSES = ("java.io.IOException", "java.nio.file.FileSystemException")
_DISK_FULL_REASONS = ("No space left on device", "Disk quota exceeded")


@dataclass(frozen=True)
class JavaCause:
    """What the Java side says went wrong."""

    error_class: str | None  # Spark's error class / condition of the outermost exception that has one
    cause_class: str  # Java class of the innermost cause
    message: str  # its message, first line, redacted and short
    disk_full: bool = False  # a cause on the chain is the OS's "No space left on device" (or quota)

    def describe(self) -> str:
        """``"No space left on device (java.io.IOException; TASK_WRITE_FAILED)"``."""
        where = self.cause_class.rsplit(".", 1)[-1] if self.cause_class else "?"
        tail = f"{where}; {self.error_class}" if self.error_class else where
        return f"{self.message or where} ({tail})"


def _java_throwable(exc: BaseException) -> Any:
    """The Java throwable behind a PySpark or py4j exception, if any."""
    for name in ("java_exception", "_origin"):
        origin = getattr(exc, name, None)
        if origin is not None:
            return origin
    return None


def _spark_error_class(exc: BaseException) -> str | None:
    for getter in ("getCondition", "getErrorClass"):  # Spark 4.0 renamed error classes to conditions
        method = getattr(exc, getter, None)
        if method is not None:
            try:
                value = method()
            except Exception:  # the gateway may be gone; the class is a nicety
                value = None
            if value:
                return str(value)
    return None


def _java_error_class(throwable: Any) -> str | None:
    for getter in ("getCondition", "getErrorClass"):
        try:
            value = getattr(throwable, getter)()
        except Exception:  # not a SparkThrowable, or an older Spark
            continue
        if value:
            return str(value)
    return None


def root_cause(exc: BaseException) -> JavaCause | None:
    """Walk the Java cause chain of ``exc``; None when ``exc`` carries no Java exception."""
    throwable = _java_throwable(exc)
    if throwable is None:
        return None
    error_class = _spark_error_class(exc)
    innermost, seen, disk_full = throwable, 0, False
    try:
        current = throwable
        while current is not None and seen < 32:
            error_class = error_class or _java_error_class(current)
            disk_full = disk_full or _is_disk_full(current)
            innermost = current
            current = current.getCause()
            seen += 1
        cause_class = str(innermost.getClass().getName())
        message = innermost.getMessage()
    except Exception:  # a broken gateway mid-walk: report what was read
        return JavaCause(error_class, "", "", disk_full) if error_class else None
    return JavaCause(error_class, cause_class, short(str(message or ""), 200), disk_full)


def _is_disk_full(throwable: Any) -> bool:
    """Whether this one Java throwable is the OS's ENOSPC / EDQUOT, by its class and message."""
    java_class = throwable.getClass()
    names: set[str] = set()
    while java_class is not None and len(names) < 16:  # the class and its superclasses
        names.add(str(java_class.getName()))
        java_class = java_class.getSuperclass()
    if not names.intersection(_DISK_FULL_CLASSES):
        return False
    reason = throwable.getReason() if "java.nio.file.FileSystemException" in names else throwable.getMessage()
    return str(reason or "").strip() in _DISK_FULL_REASONS


def classify(cause: JavaCause) -> str:
    """``"disk_full"``, ``"input"``, ``"output"`` or ``"query"``: the cause's exit-code family
    (``disk_full`` is an output error with a line of its own)."""
    if cause.cause_class == "org.apache.spark.api.python.PythonException":
        return "query"  # the Python side (a model UDF) failed, whatever the write it happened in
    if cause.disk_full:
        return "disk_full"
    if cause.error_class and cause.error_class.startswith(_INPUT_CLASSES):
        return "input"
    if cause.error_class and cause.error_class.startswith(_OUTPUT_CLASSES):
        return "output"
    if cause.cause_class in _INPUT_CAUSES:
        return "input"
    if cause.cause_class in _OUTPUT_CAUSES:
        return "output"
    return "query"
