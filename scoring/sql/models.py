"""Model tables: the value a ``MODEL = (SELECT ... FROM models_table ...)`` subquery returns.

Synapse stores ONNX bytes in a ``varbinary(max)`` column; a text value is taken as a
registry URI (``models:/churn@champion``). Either way the subquery must return exactly one
non-NULL value, checked here before any scoring, with one line naming the model table.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from scoring.errors import ModelLoadError, ModelNotFoundError, QueryError

# Every ONNX file is a protobuf ModelProto; its first field written is ir_version (field 1, varint).
_ONNX_FIRST_BYTE = 0x08


def model_value(rows: list[tuple[Any, ...]], table: str, query: str) -> bytes | str:
    """The one value of a model-table subquery's result.

    Raises:
        ModelNotFoundError: no row, or a NULL value.
        QueryError: several rows or several columns.
        ModelLoadError: bytes that are not an ONNX model.
    """
    where = f"model table '{table}' {query}"
    if not rows:
        raise ModelNotFoundError(f"{where} returned no row: no model to score with")
    if len(rows) > 1:
        raise QueryError(f"{where} returned more than one row; select exactly one model")
    if len(rows[0]) != 1:
        raise QueryError(f"{where} returns {len(rows[0])} columns; select only the model column")
    value = rows[0][0]
    if value is None:
        raise ModelNotFoundError(f"{where} returned NULL: no model to score with")
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        if not value or value[0] != _ONNX_FIRST_BYTE:
            raise ModelLoadError(f"{where}: the value is {len(value)} bytes that are not an ONNX model")
        return value
    if isinstance(value, str):
        return value.strip()
    raise QueryError(f"{where} returned a {type(value).__name__}; expected ONNX bytes or a registry URI")


def stage_bytes(value: bytes, folder: Path) -> Path:
    """Write model bytes to a content-named file the registry can pin like any local model."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(value).hexdigest()}.onnx"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(value)
        tmp.replace(path)
    return path
