"""Engines: each exposes models as SQL functions and runs compiled queries.

Both engines follow :class:`Engine`; ``duckdb`` and ``pyspark`` are imported only
inside their own module so that one engine works without the other installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from scoring.errors import (
    AuthenticationError,
    ConfigError,
    InputDataError,
    ScoringError,
)
from scoring.model import Model

_SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_sql_name(name: str, what: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise :class:`ConfigError`."""
    if not _SQL_NAME.match(name):
        raise ConfigError(f"{what} name '{name}' is not a plain SQL identifier (letters, digits, underscore)")
    return name


def check_table_path(name: str, path: str, *, hadoop: bool = False) -> None:
    """Fail before any engine starts if the Parquet source of table ``name`` is missing on its store.

    Args:
        hadoop: The Spark engine reads ``path``: a remote URI is Hadoop's to check, with
            Hadoop's own credentials; only local paths are checked here.

    ``name`` may be qualified (``dbo.mytable``): dotted plain identifiers.
    """
    from scoring import storage

    for part in name.split("."):  # a bound name may be qualified (`dbo.mytable`): dotted identifiers
        check_sql_name(part, "table")
    if storage.has_glob(path) or (hadoop and storage.is_remote(path)):
        return
    location = storage.locate(path)
    try:
        found = location.exists()
    except InputDataError:
        raise
    except ScoringError as exc:
        if isinstance(exc, AuthenticationError):
            raise AuthenticationError(f"table '{name}': {exc}") from None
        raise InputDataError(f"table '{name}': {exc}") from None
    if not found:
        raise InputDataError(f"table '{name}': no Parquet file or folder at '{location.display}'")
    if location.local:
        _check_no_empty_file(name, Path(location.path))


def _check_no_empty_file(name: str, source: Path) -> None:
    """Refuse a 0-byte Parquet file (a writer that died early), on both engines alike: DuckDB
    would fail on it and Spark would skip it, scoring part of the table without a word."""
    if source.is_dir():
        files: Iterator[Path] = (p for p in source.rglob("*.parquet") if not p.name.startswith((".", "_")))
    elif source.is_file():
        files = iter([source])
    else:
        return
    for file in files:
        if file.is_file() and file.stat().st_size == 0:
            raise InputDataError(f"table '{name}': {file.name} is empty (0 bytes), not a Parquet file: remove it")


class ModelCatalog:
    """The models an engine has registered as SQL functions.

    The job resolves and pins every model a script names before compiling it, then
    registers each one here; compiling never registers anything.
    """

    models: dict[str, Model]
    uri_functions: dict[str, str]  # function registered for a model named inside a query -> as written

    def register_model(self, name: str, model: Model) -> None:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """Engine facts the run manifest records (the Spark UDF kind, ...); none by default."""
        return {}


class Engine(Protocol):
    """What the job needs from an engine."""

    name: str
    dialect: str
    models: dict[str, Model]
    uri_functions: dict[str, str]

    def register_model(self, name: str, model: Model) -> None:
        """Expose ``model`` as the SQL function ``name``."""
        ...

    def register_table(self, name: str, path: str) -> None:
        """Expose the Parquet file, folder or glob at ``path`` as table ``name``."""
        ...

    def schema(self, relation: Any) -> Any:
        """Arrow schema of a table or subquery expression (no rows scanned)."""
        ...

    def columns(self, sql: str) -> list[str]:
        """Column names of a query as it would return them, repeats kept (nothing run)."""
        ...

    def run_statement(self, sql: str) -> None:
        """Run one statement of a script that creates a view or temp table."""
        ...

    def first_rows(self, sql: str, limit: int) -> list[tuple[Any, ...]]:
        """At most ``limit`` rows of a small query (a model-table subquery)."""
        ...

    def publish(
        self,
        sql: str,
        output: str,
        metadata: dict[str, Any],
        settings: Any,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Run ``sql`` and publish its result atomically at ``output``; return the row count."""
        ...

    def rows_scored(self) -> dict[str, int | None]:
        """Rows each registered model has scored (None: the engine cannot count them)."""
        ...

    def details(self) -> dict[str, Any]:
        """Engine facts the run manifest records."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...
