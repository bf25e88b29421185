"""Engines: each exposes models as SQL functions and runs compiled queries.

Both engines follow :class:`Engine`; ``duckdb`` and ``pyspark`` are imported only
inside their own module so that one engine works without the other installed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from scoring.errors import ConfigError, InputDataError, ModelNotFoundError, did_you_mean
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
    _check_no_empty_file(name, Path(path))


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
    """The part of an engine the SQL front asks for models: bound names, or URIs loaded on demand."""

    models: dict[str, Model]
    uri_functions: dict[str, str]  # function registered for a URI named in a query -> that URI
    _resolve: Callable[[str], Model] | None

    def register_model(self, name: str, model: Model) -> None:
        raise NotImplementedError

    def function(self, model: str) -> tuple[str, Model]:
        """SQL function for a bound model name or a registry URI (registered on first use)."""
        for bound, loaded in self.models.items():
            if bound.lower() == model.lower():
                return bound, loaded
        if self._resolve is not None and (":" in model or model.endswith(".onnx")):
            # Readable, and unique per URI: 'models:/a-b/1' and 'models:/a_b/1' must not share it.
            digest = hashlib.sha256(model.encode()).hexdigest()[:10]
            slug = re.sub(r"\W", "_", model)
            fn = f"__scoring_{slug}_{digest}"
            if fn not in self.models:
                self.register_model(fn, self._resolve(model))
                self.uri_functions[fn] = model
            return fn, self.models[fn]
        raise ModelNotFoundError(
            f"model '{model}' is not bound; bind it with --model {model}=URI or name a registry URI"
            + did_you_mean(model, self.models)
        )


class Engine(Protocol):
    """What the job needs from an engine."""

    name: str
    dialect: str
    models: dict[str, Model]

    def register_model(self, name: str, model: Model) -> None:
        """Expose ``model`` as the SQL function ``name``."""
        ...

    def register_table(self, name: str, path: str) -> None:
        """Expose the Parquet file, folder or glob at ``path`` as table ``name``."""
        ...

    def function(self, model: str) -> tuple[str, Model]:
        """SQL function for a bound model name or a registry URI."""
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
