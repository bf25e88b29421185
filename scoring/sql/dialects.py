"""Dialect extensions: the PREDICT grammar, and the only module that touches sqlglot's parser.

sqlglot parses BigQuery's ``ML.PREDICT(MODEL m, TABLE t)`` already (``exp.Predict``)
but not T-SQL's ``PREDICT(MODEL = ..., DATA = t AS d, RUNTIME = ONNX) WITH (...) AS p``
(Synapse, SQL Server), nor Fabric's scalar ``PREDICT('name/version', col, ...)``.

:class:`PredictTable` is the node for the former; :class:`_PredictParser` reads it wherever
a table may stand, and the generator writes it back, so a query round-trips unchanged.
For the scalar form, the extended dialects drop ``PREDICT`` from ``FUNCTIONS`` (as
sqlglot's own Snowflake dialect does), so it parses as a plain call with any number of
arguments (older minors keep it in ``FUNCTION_PARSERS``; it is dropped there too). The
T-SQL, DuckDB and Spark dialects are extended; BigQuery needs nothing.

Parser internals used (kept to these, so a range of sqlglot minors works): ``_parse_table``
(overridden, then delegated), ``_curr``/``_next``/``_advance``/``_match``/``_match_r_paren``,
``_parse_bitwise``, ``_parse_wrapped_csv``, ``_parse_field_def``, ``_parse_table_alias``,
``_parse_var``, ``_index``/``_tokens`` (to tell REAL from FLOAT) and ``raise_error``.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError
from sqlglot.tokens import TokenType

from scoring.errors import ConfigError, did_you_mean

# sqlglot 30 split the node base into ``exp.Expr`` (every node) and ``exp.Expression``;
# earlier minors only have ``exp.Expression``. Type hints and isinstance checks use this.
Node: Any = getattr(exp, "Expr", exp.Expression)


class PredictTable(exp.Expression):
    """``PREDICT(MODEL = m, DATA = t AS d, RUNTIME = ONNX) WITH (col type, ...) AS p``.

    Args (sqlglot ``arg_types``):
        this: the model: a string literal (bound name or registry URI), a ``@variable``,
            a scalar subquery over a model table, or an identifier.
        data: the DATA source, a table or subquery, with its alias if any.
        runtime: the RUNTIME value (optional; only ONNX is accepted when rewriting).
        parameters: the PARAMETERS value, kept so the rewrite can refuse it by name.
        columns: the WITH column definitions, or None for every output.
        alias: the result alias (``p``), with or without ``AS``.
    """

    arg_types = {
        "this": True,
        "data": True,
        "runtime": False,
        "parameters": False,
        "columns": False,
        "alias": False,
    }

    @property
    def alias_name(self) -> str:
        alias = self.args.get("alias")
        return alias.name if alias is not None else ""


_KEYS = ("MODEL", "DATA", "RUNTIME", "PARAMETERS")


class _PredictParser:
    """Parser mixin: ``PREDICT(`` in a table position starts a :class:`PredictTable`."""

    def _parse_table(self, *args: Any, **kwargs: Any) -> Any:
        p: Any = self
        if (
            not kwargs.get("schema")
            and p._curr is not None
            and p._curr.text.upper() == "PREDICT"
            and p._next is not None
            and p._next.token_type == TokenType.L_PAREN
        ):
            return self._parse_predict_table()
        return super()._parse_table(*args, **kwargs)  # type: ignore[misc]

    def _parse_predict_table(self) -> Any:
        p: Any = self
        p._advance(2)
        found: dict[str, Any] = {}
        while True:
            key = p._curr.text.upper() if p._curr is not None else ""
            if key not in _KEYS:
                p.raise_error(f"PREDICT expects MODEL =, DATA =, RUNTIME = arguments, found '{key or 'end'}'")
            p._advance()
            if not p._match(TokenType.EQ):
                p.raise_error(f"PREDICT expects '=' after {key}")
            if key == "MODEL":
                found["this"] = p._parse_bitwise()
            elif key == "DATA":
                found["data"] = p._parse_table()
            elif key == "RUNTIME":
                found["runtime"] = p._parse_var(any_token=True)
            else:
                found["parameters"] = p._parse_bitwise()
            if not p._match(TokenType.COMMA):
                break
        p._match_r_paren()
        for required in ("this", "data"):
            if found.get(required) is None:
                p.raise_error(f"PREDICT needs {'MODEL' if required == 'this' else 'DATA'} =")
        columns = None
        if p._match(TokenType.WITH):
            columns = p._parse_wrapped_csv(lambda: _column_def(p))
        alias = p._parse_table_alias()
        return PredictTable(**found, columns=columns, alias=alias)


def _column_def(p: Any) -> Any:
    """One WITH column. ``REAL`` is kept apart from ``FLOAT`` as ``FLOAT(24)``, its own definition
    in T-SQL (sqlglot reads both as FLOAT, and T-SQL's plain FLOAT is 64-bit)."""
    start = p._index
    column = p._parse_field_def()
    tokens = p._tokens[start : p._index]
    kind = column.args.get("kind") if column is not None else None
    if kind is not None and len(tokens) > 1 and tokens[1].text.upper() == "REAL":
        column.set("kind", exp.DataType.build("FLOAT(24)"))
    return column


def _predicttable_sql(self: Any, expression: PredictTable) -> str:
    args = [f"MODEL = {self.sql(expression, 'this')}", f"DATA = {self.sql(expression, 'data')}"]
    if expression.args.get("runtime") is not None:
        args.append(f"RUNTIME = {self.sql(expression, 'runtime')}")
    if expression.args.get("parameters") is not None:
        args.append(f"PARAMETERS = {self.sql(expression, 'parameters')}")
    sql = f"PREDICT({', '.join(args)})"
    columns = expression.args.get("columns")
    if columns:
        sql += f" WITH ({self.expressions(expression, key='columns', flat=True)})"
    alias = self.sql(expression, "alias")
    return f"{sql} AS {alias}" if alias else sql


def _with_predict(base: Any) -> type[Dialect]:
    # Older minors parse PREDICT(...) in FUNCTION_PARSERS, newer ones in FUNCTIONS: drop it from both.
    tables = {
        key: {k: v for k, v in getattr(base.Parser, key).items() if k != "PREDICT"}
        for key in ("FUNCTIONS", "FUNCTION_PARSERS")
    }
    parser = type(f"{base.__name__}PredictParser", (_PredictParser, base.Parser), tables)
    transforms = {**base.Generator.TRANSFORMS, PredictTable: _predicttable_sql}
    generator = type(f"{base.__name__}PredictGenerator", (base.Generator,), {"TRANSFORMS": transforms})
    return type(f"Scoring{base.__name__}", (base,), {"Parser": parser, "Generator": generator})


# The dialects extended, each built on first use: a DuckDB job never imports sqlglot's T-SQL or
# Spark (with Hive) dialects, about a tenth of a second of its start-up.
_EXTENDED: dict[str, tuple[str, str]] = {
    "tsql": ("sqlglot.dialects.tsql", "TSQL"),
    "duckdb": ("sqlglot.dialects.duckdb", "DuckDB"),
    "spark": ("sqlglot.dialects.spark", "Spark"),
}


@cache
def extended(name: str) -> type[Dialect]:
    """The PREDICT-extended dialect class for ``name`` (one of ``tsql``, ``duckdb``, ``spark``), built once."""
    module, base = _EXTENDED[name]
    return _with_predict(getattr(importlib.import_module(module), base))


def read_dialect(name: str) -> Dialect:
    """The dialect to parse queries written in ``name``, with the PREDICT extension if it has one.

    Raises:
        ConfigError: for an unknown dialect, suggesting the closest name.
    """
    key = name.lower()
    if key in _EXTENDED:
        return extended(key)()
    try:
        return Dialect.get_or_raise(key)
    except (ValueError, ParseError):
        known = [d for d in Dialect.classes if not d.startswith("scoring")]
        raise ConfigError(f"unknown SQL dialect '{name}'" + did_you_mean(name, known)) from None
