"""Engines: each exposes models as SQL functions and runs compiled queries.

Both engines follow :class:`Engine`; ``duckdb`` and ``pyspark`` are imported only
inside their own module so that one engine works without the other installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from scoring.errors import ConfigError, InputDataError
from scoring.model import Model

_SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_sql_name(name: str, what: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise :class:`ConfigError`."""
    if not _SQL_NAME.match(name):
        raise ConfigError(f"{what} name '{name}' is not a plain SQL identifier (letters, digits, underscore)")
    return name


def check_table_path(name: str, path: str) -> None:
    """Fail before any engine starts if the Parquet source of table ``name`` is missing."""
    check_sql_name(name, "table")
    if not any(ch in path for ch in "*?[") and not Path(path).exists():
        raise InputDataError(f"table '{name}': no Parquet file or folder at '{path}'")


class Engine(Protocol):
    """What the job needs from an engine."""

    name: str
    dialect: str

    def register_model(self, name: str, model: Model) -> None:
        """Expose ``model`` as the SQL function ``name``."""
        ...

    def register_table(self, name: str, path: str) -> None:
        """Expose the Parquet file, folder or glob at ``path`` as table ``name``."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...
