"""One typed error hierarchy, each class mapped to a documented CLI exit code.

Every error carries a one-line message that names the object (model, table,
column, setting), what was expected and what was found. Errors also inherit
the matching builtin where one exists, so callers embedding the library can
catch ``LookupError`` or ``TypeError`` as usual.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from scoring.redact import redact


class ExitCode:
    """Process exit codes of the ``scoring`` command (documented in the README)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    MODEL_NOT_FOUND = 4
    REGISTRY_UNAVAILABLE = 5
    MODEL_LOAD = 6
    SCHEMA_MISMATCH = 7
    QUERY = 8
    INPUT_DATA = 9
    OUTPUT = 10
    ENGINE_UNAVAILABLE = 11
    AUTHENTICATION = 12  # a registry or store refused the credentials: fix them, do not retry
    INTERRUPTED = 130
    PIPE_CLOSED = 141  # 128 + SIGPIPE: stdout was closed early (`scoring models inspect ... | head`)
    TERMINATED = 143


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean '{lowered[match[0]]}'?" if match else ""


class ScoringError(Exception):
    """Base of every error this package raises on purpose.

    Its message is redacted (:func:`scoring.redact.redact`) when the error is made, so a URI's
    password or a token echoed by a server never reaches a log, a manifest or a traceback.
    """

    exit_code: int = ExitCode.INTERNAL
    retryable: bool = False

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(ScoringError, ValueError):
    """A setting, job file or command-line value is invalid."""

    exit_code = ExitCode.CONFIG


class UsageError(ScoringError, ValueError):
    """A malformed command line (a flag's value that argparse alone cannot check)."""

    exit_code = ExitCode.USAGE


class RegistryError(ScoringError):
    """The model registry refused a request."""

    exit_code = ExitCode.MODEL_NOT_FOUND


class ModelNotFoundError(RegistryError, LookupError):
    """A registered model, version, alias or run artifact does not exist."""


class RegistryUnavailableError(RegistryError, ConnectionError):
    """The registry could not be reached; a later retry may succeed."""

    exit_code = ExitCode.REGISTRY_UNAVAILABLE
    retryable = True


class NotARegistryError(RegistryError):
    """The tracking URI answers, but not as an MLflow registry (an HTML page, a login redirect)."""

    exit_code = ExitCode.CONFIG


class ModelLoadError(ScoringError):
    """A model was found but cannot be used: wrong flavor, corrupt file, unsupported type."""

    exit_code = ExitCode.MODEL_LOAD


class SchemaMismatchError(ScoringError, TypeError):
    """Table columns or query arguments do not fit a model's inputs or outputs."""

    exit_code = ExitCode.SCHEMA_MISMATCH


class NullInputError(SchemaMismatchError, ValueError):
    """A NULL reached a model input while the null policy is ``error``."""


class PredictSyntaxError(ScoringError, ValueError):
    """A PREDICT / ML.PREDICT form or the surrounding query is malformed."""

    exit_code = ExitCode.QUERY


class QueryError(ScoringError):
    """The engine rejected the (rewritten) query."""

    exit_code = ExitCode.QUERY


class QueryRefusedError(QueryError, PermissionError):
    """The query reaches outside what the job was given: a host file, a setting, Java reflection."""


class InputDataError(ScoringError, LookupError):
    """An input table is missing or unreadable."""

    exit_code = ExitCode.INPUT_DATA


class OutputError(ScoringError, OSError):
    """The result cannot be published at the requested path."""

    exit_code = ExitCode.OUTPUT


class AuthenticationError(ScoringError, PermissionError):
    """A registry or storage service refused the credentials (HTTP 401/403 or its error code)."""

    exit_code = ExitCode.AUTHENTICATION


class EngineUnavailableError(ScoringError, RuntimeError):
    """An engine's runtime (Java for Spark, an optional package) is missing."""

    exit_code = ExitCode.ENGINE_UNAVAILABLE


class JobInterrupted(ScoringError):
    """The job received SIGTERM or SIGINT and stopped without publishing.

    The signal may land while the main thread runs a model inside the engine, which then
    reports it as its own generic error; :meth:`pending` lets the job report the stop instead.
    """

    _pending: JobInterrupted | None = None

    @classmethod
    def request(cls, signum: int) -> JobInterrupted:
        """Record that ``signum`` arrived and return the error to raise."""
        cls._pending = cls(signum)
        return cls._pending

    @classmethod
    def pending(cls) -> JobInterrupted | None:
        """The interruption requested in this process, if any."""
        return cls._pending

    @classmethod
    def clear(cls) -> None:
        """Forget an earlier interruption (a new job starts in the same process)."""
        cls._pending = None

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"job stopped by {name}; nothing was published")
        self.exit_code = ExitCode.INTERRUPTED if name == "SIGINT" else ExitCode.TERMINATED
