"""Compile one statement with PREDICT forms into plain SQL for one engine.

The pipeline is a chain of tree rewrites over a plain-data :class:`Catalog`:

1. :func:`prepare`: substitute ``@variables``, resolve table names
   (:func:`scoring.sql.qualify.resolve_tables`), and return the model references
   (:mod:`scoring.sql.references`) for the job to resolve, pin and register;
2. :func:`rewrite`: expand the PREDICT forms innermost first (:mod:`scoring.sql.predict`),
   qualify the enclosing columns (:func:`scoring.sql.qualify.qualify_columns`), check plain
   calls, and generate SQL in the engine's dialect.

Nothing here calls a registry or registers a function: golden tests run it with a catalog
of model signatures and table schemas only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from scoring.errors import PredictSyntaxError, SchemaMismatchError
from scoring.model import Model
from scoring.sql import predict, qualify, references
from scoring.sql.dialects import Node, read_dialect
from scoring.sql.qualify import Names


@dataclass
class Catalog:
    """What the rewrite needs, as plain data.

    Attributes:
        models: bound model names -> models (each is the SQL function of that name).
        functions: reference key -> (SQL function, model) for every reference resolved so far.
        schema: columns of a relation (a table or a subquery), as the engine sees them.
        names: the table names statements may use.
    """

    models: dict[str, Model]
    schema: Callable[[Node], pa.Schema]
    functions: dict[str, tuple[str, Model]] = field(default_factory=dict)
    names: Names = field(default_factory=Names)


def parse(sql: str, dialect: str) -> list[Node]:
    """Parse every statement; raise :class:`PredictSyntaxError` with the location."""
    try:
        return [s for s in sqlglot.parse(sql, dialect=read_dialect(dialect)) if s is not None]
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0]
        raise PredictSyntaxError(f"cannot parse the query as {dialect} SQL: {first}") from None


def substitute(tree: Node, variables: dict[str, Node]) -> Node:
    """Replace each ``@name`` with the value the script gave it (a copy of its expression)."""
    for param in list(tree.find_all(exp.Parameter)):
        name = param.name.lower()
        if name in variables:
            param.replace(variables[name].copy())
    return tree


def prepare(
    tree: Node, catalog: Catalog, variables: dict[str, Node], write: str, read: str | None = None
) -> list[references.Reference]:
    """Substitute variables and resolve table names in place; return the model references."""
    substitute(tree, variables)
    for node in references.predict_nodes(tree):  # a model-table query is reported as written
        model = references.model_of(node)
        model.meta[references.WRITTEN_META] = model.sql(dialect=read_dialect(read or write))
    qualify.resolve_tables(tree, catalog.names)
    return references.collect(tree, catalog.models, read_dialect(write))


def _referenced_ctes(relation: Node, tree: Node) -> list[Node]:
    """The CTEs of ``tree`` that ``relation`` reads, directly or through another CTE, in order."""
    ctes = {cte.alias_or_name.lower(): cte for cte in tree.find_all(exp.CTE)}
    wanted: set[str] = set()
    pending = [relation]
    while pending:
        node = pending.pop()
        for table in node.find_all(exp.Table):
            name = table.name.lower()
            if name in ctes and name not in wanted and not table.db:
                wanted.add(name)
                pending.append(ctes[name].this)
    return [cte for name, cte in ctes.items() if name in wanted]


def _schema_with_ctes(catalog: Catalog) -> Callable[[Node, Node], pa.Schema]:
    """Columns of a DATA relation; a CTE it reads is attached (its schema exists only in the query)."""

    def schema(relation: Node, tree: Node) -> pa.Schema:
        ctes = _referenced_ctes(relation, tree)
        if not ctes:
            return catalog.schema(relation)
        query = exp.select("*").from_(relation.copy())
        for cte in ctes:
            query = query.with_(cte.alias_or_name, as_=cte.this.copy())
        return catalog.schema(exp.Subquery(this=query))

    return schema


def check_calls(tree: Node, models: dict[str, Model]) -> None:
    """Each plain call of a bound model passes as many arguments as the model takes.

    Engines would only say that no function matches; this names the model and its inputs.
    """
    bound = {name.lower(): (name, model) for name, model in models.items()}
    for call in tree.find_all(exp.Anonymous):
        name, model = bound.get(call.name.lower(), (None, None))
        if model is None or len(call.expressions) == len(model.arguments):
            continue
        if any(arg.is_star or type(arg).__name__ == "Columns" for arg in call.expressions):
            continue  # `m(*)`, `m(t.*)`, `m(COLUMNS(...))`: the engine expands them
        names = [a.name for a in model.arguments]
        expected = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise SchemaMismatchError(
            f"model '{name}' takes {len(model.arguments)} arguments ({expected}), "
            f"but {call.name}(...) passes {len(call.expressions)}"
        )


def rewrite(tree: Node, catalog: Catalog, read: str, write: str) -> Node:
    """Expand the PREDICT forms of a prepared statement and qualify the columns around them."""
    check_calls(tree, catalog.models)
    dialect = read_dialect(write)

    def lookup(model: Node) -> tuple[str, Model, str]:
        ref = references.of_model_expression(model, catalog.models, dialect)
        if ref.kind == "bound":
            return ref.value, catalog.models[ref.value], ref.value
        fn, found = catalog.functions[ref.key]
        return fn, found, ref.written

    predict.expand(tree, lookup, _schema_with_ctes(catalog), read, write)
    return qualify.qualify_columns(tree)


def generate(tree: Node, write: str) -> str:
    """SQL text of ``tree`` in dialect ``write``."""
    return tree.sql(dialect=read_dialect(write))


def compile_query(
    sql: str,
    read: str,
    write: str,
    catalog: Catalog,
    resolve: Callable[[references.Reference], tuple[str, Model]] | None = None,
) -> str:
    """Compile one statement ``sql`` written in dialect ``read`` into SQL for dialect ``write``.

    Args:
        resolve: called once per model reference that is not bound (a URI, a model table);
            without it, such references must already be in ``catalog.functions``.

    Raises:
        PredictSyntaxError: the query does not parse or a PREDICT form is malformed.
        SchemaMismatchError: DATA columns or WITH declarations do not fit the model.
    """
    statements = parse(sql, read)
    if len(statements) != 1:
        raise PredictSyntaxError(f"expected one SQL statement, found {len(statements)}")
    tree = statements[0]
    for ref in prepare(tree, catalog, {}, write, read):
        if ref.kind != "bound" and ref.key not in catalog.functions and resolve is not None:
            catalog.functions[ref.key] = resolve(ref)
    return generate(rewrite(tree, catalog, read, write), write)


def column_aliases(tree: Node, names: list[str]) -> Node:
    """``SELECT * FROM (tree) AS __scoring_result(n1, n2, ...)``: rename the result's columns."""
    alias = exp.TableAlias(
        this=exp.to_identifier("__scoring_result"), columns=[exp.to_identifier(n, quoted=True) for n in names]
    )
    return exp.select("*").from_(exp.Subquery(this=tree, alias=alias))


def first_line(exc: BaseException) -> Any:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
