"""What a job's SQL may reach: its bound tables and the models it names, nothing of the host.

The trust model (README, "Security"): the operator who writes the job (its tables, models,
output and settings) is trusted; the SQL text is confined to what the job bound. DuckDB
enforces that itself once the tables are bound (``enable_external_access = false``,
``lock_configuration = true``: :meth:`scoring.engines.duckdb.DuckDBEngine.seal`). Spark has no
such switch, so the forms that reach the host are refused in the query tree here:

- Java reflection: ``java_method(...)``, ``reflect(...)``;
- file-path tables: ``csv.`/etc/passwd```, ``parquet.`s3://...```, ``text.`...```, ...

A job opts out with ``host_access = true`` in its job file (``SCORING_HOST_ACCESS=true``).
Statements outside the script subset (``SET``, ``COPY``, ``ADD JAR``, ...) are refused by the
SQL front (:mod:`scoring.sql`), which may call :func:`check_query` on each statement's tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlglot import exp

from scoring.errors import QueryRefusedError, UsageError

# Spark SQL functions that call arbitrary Java methods (reflect and java_method are one function).
REFLECTION = frozenset({"java_method", "reflect", "try_reflect"})
# Data source names Spark accepts as `format`.`path` in a FROM clause.
PATH_FORMATS = frozenset(
    {"csv", "json", "parquet", "orc", "text", "avro", "binaryfile", "delta", "jdbc", "hive", "xml", "file"}
)
_OPT_IN = "set host_access = true in the job file (SCORING_HOST_ACCESS=true) if this SQL is trusted"


def check_unique_names(what: str, names: Iterable[str]) -> None:
    """Refuse two bound names that differ only in case (SQL would read them as one).

    Raises:
        UsageError: naming both spellings (exit 2).
    """
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise UsageError(f"{what} names '{other}' and '{name}' differ only in case; SQL reads them as one name")


def refused_reason(node: exp.Expr) -> str | None:
    """Why ``node`` reaches the host, or None when it does not."""
    if isinstance(node, exp.Anonymous | exp.Func):
        name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
        if name in REFLECTION:
            return f"{name}() calls Java methods of the engine's host"
    if isinstance(node, exp.Table) and node.args.get("db") is not None and not node.args.get("catalog"):
        fmt = node.db.lower()
        table = node.this
        if fmt in PATH_FORMATS and isinstance(table, exp.Identifier) and table.quoted and _looks_like_path(table.name):
            return f"{fmt}.`{table.name}` reads a file of the engine's host, not a bound table"
    return None


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or ":" in name or name.startswith(".")


def check_query(tree: exp.Expr) -> None:
    """Refuse a query tree (Spark dialect) that reaches the host.

    Raises:
        QueryRefusedError: one line naming the construct and the opt-in (exit 8).
    """
    for node in tree.walk():
        reason = refused_reason(node)
        if reason is not None:
            raise QueryRefusedError(f"query refused: {reason}; {_OPT_IN}")


def check_sql(sql: str, dialect: Any = "spark", *, strict: bool = True) -> None:
    """:func:`check_query` over every statement of ``sql`` as ``dialect`` (a name or a sqlglot
    dialect) parses it. With ``strict=False`` a text that does not parse passes: the SQL
    front reports its syntax error with line and column."""
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        statements = sqlglot.parse(sql, read=dialect)
    except SqlglotError:
        if strict:
            raise
        return
    for statement in statements:
        if statement is not None:
            check_query(statement)
