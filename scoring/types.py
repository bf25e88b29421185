"""The one type table: ONNX element type <-> numpy <-> Arrow <-> DuckDB <-> Spark.

Arrow is the pivot: model outputs are described as Arrow types and each engine
renders them with :func:`duckdb_type` or :func:`spark_type`. Engine modules turn
those strings into their own type objects, so this module imports no engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from scoring.errors import ModelLoadError


@dataclass(frozen=True)
class TypeRow:
    """One row of the type table."""

    onnx: str
    numpy: np.dtype
    arrow: pa.DataType
    duckdb: str
    spark: str


TYPE_TABLE: tuple[TypeRow, ...] = (
    TypeRow("float", np.dtype("float32"), pa.float32(), "FLOAT", "FLOAT"),
    TypeRow("double", np.dtype("float64"), pa.float64(), "DOUBLE", "DOUBLE"),
    TypeRow("int64", np.dtype("int64"), pa.int64(), "BIGINT", "BIGINT"),
    TypeRow("int32", np.dtype("int32"), pa.int32(), "INTEGER", "INT"),
    TypeRow("int16", np.dtype("int16"), pa.int16(), "SMALLINT", "SMALLINT"),
    TypeRow("int8", np.dtype("int8"), pa.int8(), "TINYINT", "TINYINT"),
    TypeRow("uint8", np.dtype("uint8"), pa.uint8(), "UTINYINT", "SMALLINT"),
    TypeRow("bool", np.dtype("bool"), pa.bool_(), "BOOLEAN", "BOOLEAN"),
    TypeRow("string", np.dtype("object"), pa.string(), "VARCHAR", "STRING"),
)

_BY_ONNX = {row.onnx: row for row in TYPE_TABLE}
_BY_ARROW = {row.arrow: row for row in TYPE_TABLE}


def onnx_element(onnx_type: str) -> str:
    """``'tensor(float)'`` -> ``'float'``; other kinds are returned unchanged."""
    if onnx_type.startswith("tensor(") and onnx_type.endswith(")"):
        return onnx_type[len("tensor(") : -1]
    return onnx_type


def row_for_onnx(onnx_type: str, *, model: str, tensor: str) -> TypeRow:
    """Look up the row of an ONNX tensor type, or fail naming model, tensor and type."""
    element = onnx_element(onnx_type)
    row = _BY_ONNX.get(element)
    if row is None:
        raise ModelLoadError(
            f"model '{model}': tensor '{tensor}' has type {onnx_type}, which has no SQL mapping "
            f"(supported: {', '.join(r.onnx for r in TYPE_TABLE)})"
        )
    return row


def _leaf(arrow_type: pa.DataType) -> TypeRow:
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        arrow_type = pa.string()
    row = _BY_ARROW.get(arrow_type)
    if row is None:
        raise ModelLoadError(f"Arrow type {arrow_type} has no SQL mapping")
    return row


def duckdb_type(arrow_type: pa.DataType) -> str:
    """Render an Arrow type (leaf, list, map or struct) as a DuckDB type string."""
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(
            f'"{f.name}" {duckdb_type(f.type)}'
            for f in arrow_type  # type: ignore[attr-defined]
        )
        return f"STRUCT({fields})"
    if pa.types.is_map(arrow_type):
        return f"MAP({duckdb_type(arrow_type.key_type)}, {duckdb_type(arrow_type.item_type)})"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"{duckdb_type(arrow_type.value_type)}[]"
    return _leaf(arrow_type).duckdb


def spark_type(arrow_type: pa.DataType) -> str:
    """Render an Arrow type (leaf, list, map or struct) as a Spark DDL type string."""
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(
            f"`{f.name}`: {spark_type(f.type)}"
            for f in arrow_type  # type: ignore[attr-defined]
        )
        return f"STRUCT<{fields}>"
    if pa.types.is_map(arrow_type):
        return f"MAP<{spark_type(arrow_type.key_type)}, {spark_type(arrow_type.item_type)}>"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"ARRAY<{spark_type(arrow_type.value_type)}>"
    return _leaf(arrow_type).spark


def is_numeric(arrow_type: pa.DataType) -> bool:
    """True for integer, floating point and boolean Arrow types."""
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_decimal(arrow_type)
    )


def is_text(arrow_type: pa.DataType) -> bool:
    """True for the Arrow string types DuckDB and Spark hand over."""
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type)


def can_feed(column: pa.DataType, onnx_type: str) -> bool:
    """Whether a column of Arrow type ``column`` may feed an ONNX input of ``onnx_type``.

    Numbers convert among themselves (float64 -> float32, int -> float, bool -> number);
    text feeds only text. Anything else is a schema mismatch, never a silent cast.
    """
    target = _BY_ONNX.get(onnx_element(onnx_type))
    if target is None:
        return False
    if target.onnx == "string":
        return is_text(column)
    if pa.types.is_integer(target.arrow) and pa.types.is_floating(column):
        return False
    return is_numeric(column) or pa.types.is_null(column)


def can_declare(output: pa.DataType, declared: pa.DataType) -> bool:
    """Whether a model output of type ``output`` may be declared as ``declared`` in SQL."""
    if output == declared:
        return True
    if is_text(declared):
        return True  # every value has a text form (lists and maps as JSON)
    if pa.types.is_nested(output) or pa.types.is_nested(declared):
        return False
    return is_numeric(output) and is_numeric(declared)


# -- types declared in SQL (T-SQL PREDICT ... WITH (col type)) ---------------------------------
# sqlglot type names -> Arrow, as T-SQL means them: BIT is a boolean, TINYINT is unsigned,
# MONEY is a fixed-point decimal. FLOAT is resolved by :func:`declared_type` (its width
# depends on the precision and, without one, on the dialect); text types are VARCHAR.
_DECLARED: dict[str, pa.DataType] = {
    "BIT": pa.bool_(),
    "BOOLEAN": pa.bool_(),
    "TINYINT": pa.int8(),
    "UTINYINT": pa.uint8(),
    "SMALLINT": pa.int16(),
    "INT": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "MONEY": pa.decimal128(19, 4),
    "SMALLMONEY": pa.decimal128(10, 4),
}
_TEXT = {"CHAR", "NCHAR", "VARCHAR", "NVARCHAR", "TEXT", "NAME", "STRING"}


def declared_type(name: str, params: list[str], dialect: str) -> pa.DataType | None:
    """Arrow type of a type declared in SQL (``name`` as sqlglot spells it, ``params`` its
    arguments), or None when it has no mapping.

    ``FLOAT(1..24)`` (and ``REAL``) is 32-bit, ``FLOAT(25..53)`` 64-bit; a bare ``FLOAT`` is
    64-bit in T-SQL (``FLOAT(53)``, https://learn.microsoft.com/sql/t-sql/data-types/float-and-real-transact-sql)
    and 32-bit elsewhere. ``DECIMAL`` without a precision is T-SQL's ``DECIMAL(18, 0)``.
    """
    name = name.upper()
    if name == "FLOAT":
        if params and params[0].isdigit():
            return pa.float32() if int(params[0]) <= 24 else pa.float64()
        return pa.float64() if dialect == "tsql" else pa.float32()
    if name == "DECIMAL":
        digits = [int(p) for p in params if p.isdigit()]
        precision, scale = (digits + [18, 0][len(digits) :])[:2]
        return pa.decimal128(precision, scale)
    if name in _TEXT:
        return pa.string()
    return _DECLARED.get(name)


def _decimal_sql(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision}, {arrow_type.scale})"
    return None


def engine_type(arrow_type: pa.DataType, engine: str) -> str:
    """Render a leaf Arrow type (decimals included) for ``engine`` (``duckdb`` or ``spark``)."""
    return _decimal_sql(arrow_type) or (spark_type(arrow_type) if engine == "spark" else duckdb_type(arrow_type))
