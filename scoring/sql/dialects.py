"""Dialect extensions: Synapse/SQL Server ``PREDICT(...) WITH (...)`` as a table source.

sqlglot parses BigQuery's ``ML.PREDICT(MODEL m, TABLE t)`` already (``exp.Predict``)
but not T-SQL's ``PREDICT(MODEL = ..., DATA = t AS d, RUNTIME = ONNX) WITH (...) AS p``.
:class:`PredictTable` is the node for the latter; the mixin below teaches a dialect's
parser to read it wherever a table may appear, and its generator to write it back,
so a query round-trips unchanged. The T-SQL, DuckDB and Spark dialects get it.
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.dialects.spark import Spark
from sqlglot.dialects.tsql import TSQL
from sqlglot.errors import ParseError
from sqlglot.tokens import TokenType

from scoring.errors import ConfigError, did_you_mean


class PredictTable(exp.Expression):
    """``PREDICT(MODEL = m, DATA = t AS d, RUNTIME = ONNX) WITH (col type, ...) AS p``.

    Args (sqlglot ``arg_types``):
        this: the model: a string literal (bound name or registry URI) or identifier.
        data: the DATA source, a table or subquery, with its alias.
        runtime: the RUNTIME value (only ONNX is accepted when rewriting).
        columns: the WITH column definitions, or None for every output.
        alias: the result alias (``p``).
    """

    arg_types = {
        "this": True,
        "data": True,
        "runtime": False,
        "columns": False,
        "alias": False,
        "style": False,
    }

    @property
    def alias_name(self) -> str:
        alias = self.args.get("alias")
        return alias.name if alias is not None else ""


class _PredictParser:
    """Parser mixin: ``PREDICT(`` in a table position starts a :class:`PredictTable`."""

    def _parse_table(self, *args: Any, **kwargs: Any) -> exp.Expr | None:
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

    def _parse_predict_table(self) -> exp.Expr:
        p: Any = self
        p._advance(2)
        found: dict[str, Any] = {}
        while True:
            key = p._curr.text.upper() if p._curr is not None else ""
            if key not in ("MODEL", "DATA", "RUNTIME", "PARAMETERS"):
                p.raise_error(f"PREDICT expects MODEL =, DATA =, RUNTIME = arguments, found '{key or 'end'}'")
            p._advance()
            if not p._match(TokenType.EQ):
                p.raise_error(f"PREDICT expects '=' after {key}")
            if key == "MODEL":
                found["this"] = p._parse_primary() or p._parse_id_var(any_token=False)
            elif key == "DATA":
                found["data"] = p._parse_table()
            elif key == "RUNTIME":
                found["runtime"] = p._parse_var(any_token=True)
            else:
                found["parameters"] = p._parse_primary()
            if not p._match(TokenType.COMMA):
                break
        p._match_r_paren()
        for required in ("this", "data"):
            if found.get(required) is None:
                p.raise_error(f"PREDICT needs {'MODEL' if required == 'this' else 'DATA'} =")
        columns = None
        if p._match(TokenType.WITH):
            columns = p._parse_wrapped_csv(p._parse_field_def)
        alias = p._parse_table_alias()
        found.pop("parameters", None)
        return p.expression(PredictTable(**found, columns=columns, alias=alias))


def _predicttable_sql(self: Any, expression: PredictTable) -> str:
    args = [f"MODEL = {self.sql(expression, 'this')}", f"DATA = {self.sql(expression, 'data')}"]
    if expression.args.get("runtime") is not None:
        args.append(f"RUNTIME = {self.sql(expression, 'runtime')}")
    sql = f"PREDICT({', '.join(args)})"
    columns = expression.args.get("columns")
    if columns:
        sql += f" WITH ({self.expressions(expression, key='columns', flat=True)})"
    alias = self.sql(expression, "alias")
    return f"{sql} AS {alias}" if alias else sql


def _with_predict(base: Any) -> type[Dialect]:
    parser = type(f"{base.__name__}PredictParser", (_PredictParser, base.Parser), {})
    transforms = {**base.Generator.TRANSFORMS, PredictTable: _predicttable_sql}
    generator = type(f"{base.__name__}PredictGenerator", (base.Generator,), {"TRANSFORMS": transforms})
    return type(f"Scoring{base.__name__}", (base,), {"Parser": parser, "Generator": generator})


ScoringTSQL = _with_predict(TSQL)
ScoringDuckDB = _with_predict(DuckDB)
ScoringSpark = _with_predict(Spark)

_EXTENDED: dict[str, type[Dialect]] = {
    "tsql": ScoringTSQL,
    "duckdb": ScoringDuckDB,
    "spark": ScoringSpark,
}


def read_dialect(name: str) -> Dialect:
    """The dialect to parse queries written in ``name``, with the PREDICT extension if it has one.

    Raises:
        ConfigError: for an unknown dialect, suggesting the closest name.
    """
    key = name.lower()
    if key in _EXTENDED:
        return _EXTENDED[key]()
    try:
        return Dialect.get_or_raise(key)
    except (ValueError, ParseError):
        known = [d for d in Dialect.classes if not d.startswith("scoring")]
        raise ConfigError(f"unknown SQL dialect '{name}'" + did_you_mean(name, known)) from None
