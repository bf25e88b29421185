"""Scripts: several statements run in order; the rows of the last one are published.

A script may contain exactly these statements (anything else is refused, with one line,
before any statement runs, so a job cannot reach outside the tables it was given):

- ``DECLARE @v type [= expr]`` and ``SET @v = expr`` (a variable, substituted where used;
  ``MODEL = @v`` takes a model name, URI or model-table subquery from it);
- ``CREATE [OR REPLACE] [TEMP] VIEW name AS SELECT ...``;
- ``CREATE [TEMP] TABLE name AS SELECT ...`` and ``SELECT ... INTO #t FROM ...``: a temp
  table of the script (never a file, whatever the name);
- queries (``SELECT``, set operations, CTEs): only as the last statement;
- ``INSERT INTO name SELECT ...``: only as the last statement, which publishes the rows
  the ``SELECT`` would insert.

The last statement must produce rows: a query, an ``INSERT ... SELECT``, a CTAS or a
``SELECT ... INTO``. Refused, for example: ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``,
``EXPORT``/``IMPORT``, ``PRAGMA``, an engine ``SET``/``RESET``, ``USE``, ``DROP``, Spark's
``ADD JAR``, ``CREATE TABLE ... LOCATION``/``USING``, ``CREATE FUNCTION``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from scoring.errors import PredictSyntaxError, QueryError
from scoring.sql.compile import parse
from scoring.sql.dialects import Node, read_dialect
from scoring.sql.qualify import table_parts

_QUERY: tuple[type, ...] = tuple(
    t for t in (getattr(exp, "Query", None), getattr(exp, "Subqueryable", None)) if isinstance(t, type)
) or (exp.Select, exp.Union)
_FILE_PROPERTIES = tuple(
    t for t in (getattr(exp, n, None) for n in ("LocationProperty", "FileFormatProperty", "ExternalProperty")) if t
)
# First words of statements sqlglot may not parse; refused by name rather than as a syntax error.
_REFUSED_WORDS = {
    "COPY", "ATTACH", "DETACH", "INSTALL", "LOAD", "EXPORT", "IMPORT", "PRAGMA", "SET", "RESET",
    "ADD", "USE", "DROP", "ALTER", "GRANT", "CALL", "EXEC", "EXECUTE", "VACUUM", "CHECKPOINT",
}  # fmt: skip


class StatementRefused(QueryError):
    """A script statement outside the subset a job may run (exit code of a query error)."""


@dataclass
class Step:
    """One statement to run.

    Attributes:
        kind: ``query`` (rows published if last), ``table`` / ``view`` (an object later
            statements read).
        tree: the query of the statement (the SELECT of a CTAS, INSERT or SELECT INTO).
        target: for ``table`` / ``view``: the name parts as written.
        variables: the script's variables as this statement sees them.
    """

    kind: Literal["query", "table", "view"]
    tree: Node
    target: tuple[str, ...] = ()
    variables: dict[str, Node] = field(default_factory=dict)
    written: str = ""


def _refuse(what: str, why: str = "") -> StatementRefused:
    return StatementRefused(
        f"{what} is not allowed in a scoring script{': ' + why if why else ''}; a script may contain "
        "DECLARE/SET @variables, CREATE VIEW, CREATE [TEMP] TABLE ... AS SELECT, SELECT ... INTO #t, "
        "and as its last statement a query or INSERT INTO ... SELECT"
    )


def _keyword(node: Node) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return type(node).__name__.upper()


def _refused_by_first_word(sql: str, dialect: str) -> StatementRefused | None:
    """For a script sqlglot cannot parse: a statement that starts with a refused keyword."""
    try:
        tokens = read_dialect(dialect).tokenize(sql)
    except (TokenError, ParseError):
        return None
    starts, first = [], True
    for token in tokens:
        if first:
            starts.append(token.text.upper())
        first = token.token_type.name == "SEMICOLON"
    for word in starts:
        if word in _REFUSED_WORDS:
            return _refuse(word)
    return None


def _declare(node: Node, variables: dict[str, Node]) -> None:
    for item in node.expressions:
        names = item.this if isinstance(item.this, list) else [item.this]
        default = item.args.get("default")
        for name in names:
            variables[name.name.lower()] = default if isinstance(default, Node) else exp.Null()


def _set(node: exp.Set, variables: dict[str, Node]) -> None:
    for item in node.expressions:
        assignment = item.this if isinstance(item, exp.SetItem) else item
        if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Parameter):
            raise _refuse(
                f"SET {assignment.sql() if isinstance(assignment, Node) else ''}".strip(),
                "engine settings are fixed by the job",
            )
        variables[assignment.this.name.lower()] = assignment.expression


def _create(node: exp.Create, last: bool) -> Step:
    kind = str(node.args.get("kind") or "").upper()
    query = node.args.get("expression")
    target = node.this.this if isinstance(node.this, exp.Schema) else node.this
    if kind not in ("TABLE", "VIEW") or not isinstance(query, _QUERY) or not isinstance(target, exp.Table):
        raise _refuse(f"CREATE {kind}".strip(), "only CREATE VIEW / CREATE TABLE ... AS SELECT")
    properties = node.args.get("properties")
    for prop in properties.expressions if properties is not None else []:
        if isinstance(prop, _FILE_PROPERTIES):
            raise _refuse(f"CREATE {kind} ... {prop.sql()}", "a script never writes files")
    if kind == "VIEW" and last:
        raise _refuse("CREATE VIEW as the last statement", "the last statement must return the rows to publish")
    return Step("view" if kind == "VIEW" else "table", query, table_parts(target))


def plan(sql: str, dialect: str) -> list[Step]:
    """Parse a script and check every statement; refuse the first one outside the subset.

    Raises:
        StatementRefused: a statement a scoring script may not contain.
        PredictSyntaxError: the script does not parse.
    """
    try:
        statements = parse(sql, dialect)
    except PredictSyntaxError:
        refused = _refused_by_first_word(sql, dialect)
        if refused is not None:
            raise refused from None
        raise
    if not statements:
        raise PredictSyntaxError("the query is empty")
    variables: dict[str, Node] = {}
    steps: list[Step] = []
    for position, node in enumerate(statements):
        last = position == len(statements) - 1
        if isinstance(node, exp.Declare):
            _declare(node, variables)
            continue
        if isinstance(node, exp.Set):
            _set(node, variables)
            continue
        step = _step(node, last)
        step.variables = dict(variables)
        steps.append(step)
    last_node = statements[-1]
    if isinstance(last_node, exp.Declare | exp.Set):
        raise _refuse(
            f"{_keyword(last_node)} as the last statement", "the last statement must return the rows to publish"
        )
    if steps[-1].kind == "table":  # a CTAS or SELECT INTO last: publish the rows it would hold
        steps[-1] = Step("query", steps[-1].tree, variables=steps[-1].variables)
    return steps


def _step(node: Node, last: bool) -> Step:
    if isinstance(node, exp.Create):
        return _create(node, last)
    if isinstance(node, exp.Insert):
        query = node.args.get("expression")
        if not last or not isinstance(query, _QUERY):
            raise _refuse("INSERT", "only INSERT INTO ... SELECT, as the last statement")
        return Step("query", query)
    if isinstance(node, exp.Select) and node.args.get("into") is not None:
        into = node.args["into"]
        node.set("into", None)
        return Step("table", node, table_parts(into.this))
    if isinstance(node, _QUERY):
        if not last:
            raise _refuse("a query before the last statement", "only the last statement may return rows")
        return Step("query", node)
    raise _refuse(_keyword(node))


def creation_sql(kind: str, name: str, query: Node, write: str) -> str:
    """The engine statement for a view or temp table of the script.

    A temp table is materialized once (DuckDB ``CREATE TEMP TABLE``, Spark ``CACHE TABLE``,
    which is eager), so a model inside it scores each row once however often it is read.
    """
    table = exp.Table(this=exp.to_identifier(name, quoted=True))
    temporary = exp.Properties(expressions=[exp.TemporaryProperty()])
    node: Node
    if kind == "table" and write == "spark":
        node = exp.Cache(this=table, expression=query, lazy=False)
    else:
        node = exp.Create(
            this=table,
            kind="TABLE" if kind == "table" else "VIEW",
            expression=query,
            replace=True,
            properties=temporary,
        )
    return node.sql(dialect=read_dialect(write))


def drop_sql(name: str, write: str, kind: str) -> str:
    """Drop a view or temp table of the script once the job is done (a shared session keeps them).

    Spark's cached table is a temp view (dropping it uncaches it); DuckDB's is a temp table.
    """
    what = "TABLE" if kind == "table" and write != "spark" else "VIEW"
    node = parse(f"DROP {what} IF EXISTS placeholder", write)[0]  # Drop's arg names differ across minors
    node.find(exp.Table).set("this", exp.to_identifier(name, quoted=True))
    return node.sql(dialect=read_dialect(write))
