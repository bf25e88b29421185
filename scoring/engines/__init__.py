"""Engines: each exposes models as SQL functions and runs compiled queries.

Both engines follow :class:`Engine`; ``duckdb`` and ``pyspark`` are imported only
inside their own module so that one engine works without the other installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from scoring.errors import ConfigError, InputDataError
from scoring.model import Model

_SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_sql_name(name: str, what: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise :class:`ConfigError`."""
    if not _SQL_NAME.match(name):
        raise ConfigError(f"{what} name '{name}' is not a plain SQL identifier (letters, digits, underscore)")
    return name


def check_table_path(name: str, path: str) -> None:
    """Fail before any engine starts if the Parquet source of table ``name`` is missing.

    ``name`` may be qualified (``dbo.mytable``): dotted plain identifiers.
    """
    for part in name.split("."):
        check_sql_name(part, "table")
    if not any(ch in path for ch in "*?[") and not Path(path).exists():
        raise InputDataError(f"table '{name}': no Parquet file or folder at '{path}'")


class ModelCatalog:
    """The models an engine has registered as SQL functions.

    The job resolves and pins every model a script names before compiling it, then
    registers each one here; compiling never registers anything.
    """

    models: dict[str, Model]
    uri_functions: dict[str, str]  # function registered for a model named inside a query -> as written

    def register_model(self, name: str, model: Model) -> None:
        raise NotImplementedError


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
        output: Path,
        metadata: dict[str, Any],
        settings: Any,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Run ``sql`` and publish its result atomically at ``output``; return the row count."""
        ...

    def rows_scored(self) -> dict[str, int]:
        """Rows each registered model has scored."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...
