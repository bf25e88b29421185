"""Expansion rules: each PREDICT form becomes plain SQL calling the model's SQL function.

Every rule is a function of the node, the model and the DATA schema that returns the node
that replaces it; :func:`expand` applies them innermost first (a PREDICT inside another's
DATA, in a CTE, subquery or join is expanded before the PREDICT that reads it), dispatching
on the node type: :class:`PredictTable` (T-SQL), ``exp.Predict`` (BigQuery ``ML.PREDICT``),
a plain call named ``PREDICT`` (Fabric).

The T-SQL form exposes the DATA alias and the result alias as two STRUCT columns (``d`` and
``p``); ``d.col``, ``d.*``, ``p.label`` and ``p.*`` then resolve as struct field access on
both DuckDB and Spark, which keeps the enclosing query as the user wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
from sqlglot import exp

from scoring import types
from scoring.errors import PredictSyntaxError, SchemaMismatchError
from scoring.model import Model
from scoring.sql.dialects import Node, PredictTable
from scoring.sql.qualify import NAME_META, PREDICT_META, PredictShape
from scoring.sql.references import is_scalar_predict, model_of

OUT = "__scoring_out"
INNER = "__scoring_inner"
DATA = "__scoring_data"

Schema = Callable[[Node], pa.Schema]
Lookup = Callable[[Node], tuple[str, Model, str]]  # MODEL expression -> (SQL function, model, name as written)


def _field(name: str) -> Node:
    """``__scoring_inner.__scoring_out.<name>``: struct field access on the model's result."""
    return exp.Dot(this=exp.column(OUT, table=INNER, quoted=True), expression=exp.to_identifier(name, quoted=True))


def _output_value(model: Model, name: str) -> Node:
    if len(model.outputs) == 1:
        return exp.column(OUT, table=INNER, quoted=True)
    return _field(name)


def call(fn: str, model: Model, alias: str, schema: pa.Schema, table: str, name: str | None = None) -> Node:
    """``fn(alias.col, ...)``: the model's arguments bound by name to the DATA columns.

    ``name`` is the model as the query names it, for messages.
    """
    columns = model.bind(schema, table, name)
    arguments = []
    for arg, column in zip(model.arguments, columns, strict=True):
        ref: Node = exp.column(column, table=alias, quoted=True)
        element = types.onnx_element(arg.onnx_type)
        if pa.types.is_boolean(schema.field(column).type) and element != "bool":
            # bool -> number is a safe conversion, but no engine casts BOOLEAN to a number itself.
            ref = exp.cast(ref, exp.DataType.build("DOUBLE" if element in ("float", "double") else "BIGINT"))
        arguments.append(ref)
    return exp.Anonymous(this=fn, expressions=arguments)


def _declared_value(model: Model, column: exp.ColumnDef, read: str, write: str) -> Node:
    """The expression for one WITH column: the output, cast or turned into JSON text."""
    output = model.find_output(column.name)
    value = _output_value(model, output.name)
    kind = column.args.get("kind")
    if kind is None or kind.this == exp.DataType.Type.VARIANT:
        return value  # native type: LIST / MAP / scalar as the model returns it
    declared = types.declared_type(kind.this.name, [e.name for e in kind.expressions], read)
    if declared is None or not types.can_declare(output.arrow_type, declared):
        raise SchemaMismatchError(
            f"model '{model.name}' output '{output.name}' is {output.arrow_type}; "
            f"it cannot be declared as {kind.sql()} in WITH (use a numeric type for numbers, "
            "NVARCHAR for JSON text, SQL_VARIANT for the native LIST/MAP)"
        )
    if types.is_text(declared):
        if output.kind != "scalar":
            value = exp.func("TO_JSON", value)
        return exp.cast(value, exp.DataType.build("VARCHAR"))
    if declared == output.arrow_type:
        return value
    return exp.cast(value, exp.DataType.build(types.engine_type(declared, write), dialect=write))


def _data_parts(data: Node) -> tuple[Node, str, str]:
    """DATA without its alias, the alias that qualifies its columns, and its name for messages."""
    data = data.copy()
    if isinstance(data, exp.Table):
        alias = data.alias or data.name
        written = data.meta.get(NAME_META, data.name)
    elif isinstance(data, exp.Subquery):
        alias = data.alias or "d"
        written = alias
    else:
        raise PredictSyntaxError(f"PREDICT DATA must be a table or (query), found {data.sql()}")
    data.set("alias", None)
    return data, alias, written


def expand_tsql(
    node: PredictTable, fn: str, model: Model, schema: Schema, read: str, write: str, name: str | None = None
) -> Node:
    """T-SQL ``PREDICT(MODEL = ..., DATA = ...) WITH (...) AS p``."""
    if node.args.get("parameters") is not None:
        raise PredictSyntaxError(
            "PREDICT PARAMETERS = ... is not supported: an ONNX model takes only its inputs; remove it"
        )
    runtime = node.args.get("runtime")
    if runtime is not None and runtime.name.upper() != "ONNX":
        raise PredictSyntaxError(f"PREDICT RUNTIME = {runtime.name} is not supported; use RUNTIME = ONNX")
    data, d, written = _data_parts(node.args["data"])
    p = node.alias_name or "p"
    columns_of = schema(data)
    packed = exp.Struct(
        expressions=[
            exp.PropertyEQ(this=exp.to_identifier(c, quoted=True), expression=exp.column(c, table=d, quoted=True))
            for c in columns_of.names
        ]
    )
    inner = exp.select(
        exp.alias_(packed, d, quoted=True),
        exp.alias_(call(fn, model, d, columns_of, written, name), OUT, quoted=True),
    ).from_(exp.alias_(data, d, table=True, quoted=True))
    declared = node.args.get("columns") or [exp.ColumnDef(this=exp.to_identifier(o.name)) for o in model.outputs]
    outputs = exp.Struct(
        expressions=[
            exp.PropertyEQ(
                this=exp.to_identifier(c.name, quoted=True), expression=_declared_value(model, c, read, write)
            )
            for c in declared
        ]
    )
    outer = exp.select(
        exp.alias_(exp.column(d, table=INNER, quoted=True), d, quoted=True),
        exp.alias_(outputs, p, quoted=True),
    ).from_(exp.alias_(inner.subquery(), INNER, table=True, quoted=True))
    result = exp.alias_(outer.subquery(), f"__scoring_predict_{p}", table=True, quoted=True)
    result.meta[PREDICT_META] = PredictShape(d, p, tuple(columns_of.names), tuple(c.name for c in declared), written)
    return result


def expand_ml_predict(node: exp.Predict, fn: str, model: Model, schema: Schema, name: str | None = None) -> Node:
    """BigQuery ``ML.PREDICT(MODEL m, TABLE t | (query))``: every input column, then one column
    per model output named as the model names it.

    That is what BigQuery returns for an imported ONNX model (the ``predicted_`` prefix is
    only for models trained in BigQuery): https://cloud.google.com/bigquery/docs/making-predictions-with-sklearn-models-in-onnx-format
    and https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-predict.
    BigQuery documents no rule for an input column named like an output, so that is an error.
    """
    data = node.expression
    if data is None:
        raise PredictSyntaxError("ML.PREDICT needs TABLE t or a (query) after the model")
    if node.args.get("params_struct") is not None:
        raise PredictSyntaxError("ML.PREDICT settings (the STRUCT argument) are not supported")
    data = data.copy()
    if isinstance(data, exp.Table):
        written = data.meta.get(NAME_META, data.name)
        data.set("alias", None)
    else:
        written = "(query)"
        if not isinstance(data, exp.Subquery):
            data = exp.Subquery(this=data)
    columns_of = schema(data)
    inputs = {c.lower() for c in columns_of.names}
    for output in model.outputs:
        if output.name.lower() in inputs:
            raise SchemaMismatchError(
                f"ML.PREDICT: input column '{output.name}' of {written} has the name of an output of model "
                f"'{model.name}'; leave it out of the input query or rename it"
            )
    inner = exp.select(
        exp.Column(this=exp.Star(), table=exp.to_identifier(DATA)),
        exp.alias_(call(fn, model, DATA, columns_of, written, name), OUT, quoted=True),
    ).from_(exp.alias_(data, DATA, table=True, quoted=True))
    selected: list[Any] = [exp.column(c, table=INNER, quoted=True) for c in columns_of.names]
    selected += [exp.alias_(_output_value(model, o.name), o.name, quoted=True) for o in model.outputs]
    return exp.select(*selected).from_(exp.alias_(inner.subquery(), INNER, table=True, quoted=True)).subquery()


def expand_scalar(node: exp.Anonymous, fn: str) -> Node:
    """Fabric ``PREDICT('name/version', col, ...)``: the plain call, arguments by position."""
    return exp.Anonymous(this=fn, expressions=[a.copy() for a in node.expressions[1:]])


def _depth(node: Node) -> int:
    depth = 0
    while node.parent is not None:
        node = node.parent
        depth += 1
    return depth


def _innermost_first(tree: Node) -> list[Node]:
    """PREDICT nodes, deepest first; a CTE's before the query that reads it (CTEs come first)."""
    from scoring.sql.references import predict_nodes

    nodes = predict_nodes(tree)
    in_cte = [n for n in nodes if n.find_ancestor(exp.CTE) is not None]
    rest = [n for n in nodes if n.find_ancestor(exp.CTE) is None]
    return sorted(in_cte, key=_depth, reverse=True) + sorted(rest, key=_depth, reverse=True)


def expand(tree: Node, lookup: Lookup, schema: Callable[[Node, Node], pa.Schema], read: str, write: str) -> Node:
    """Expand every PREDICT form of ``tree`` innermost first.

    Args:
        lookup: the SQL function and model for a MODEL expression.
        schema: the columns of a DATA relation, given the relation and the tree (for its CTEs).
    """
    for node in _innermost_first(tree):
        fn, model, name = lookup(model_of(node))

        def data_schema(relation: Node) -> pa.Schema:
            return schema(relation, tree)

        if isinstance(node, PredictTable):
            node.replace(expand_tsql(node, fn, model, data_schema, read, write, name))
        elif isinstance(node, exp.Predict):
            replacement = expand_ml_predict(node, fn, model, data_schema, name)
            holder = node.parent if isinstance(node.parent, exp.Table) else None
            if holder is not None:
                alias = holder.args.get("alias")
                replacement.set(
                    "alias", alias.copy() if alias is not None else exp.TableAlias(this=exp.to_identifier("ml_predict"))
                )
                holder.replace(replacement)
            else:
                node.replace(replacement)
        elif is_scalar_predict(node):
            node.replace(expand_scalar(node, fn))
    return tree
