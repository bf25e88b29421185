"""Compile a query with PREDICT forms into plain SQL for one engine.

The pipeline is a chain of tree rewrites (each a function ``Expression -> Expression``):

1. :func:`parse` reads one statement in the user's dialect (with the PREDICT extension).
2. :func:`normalize_ml_predict` turns BigQuery ``ML.PREDICT(MODEL m, TABLE t)`` into a
   :class:`~scoring.sql.dialects.PredictTable` of style ``bigquery``.
3. :func:`expand_predict` replaces every PredictTable with a subquery that calls the
   model's SQL function once per row, and qualifies the enclosing SELECT's columns.
4. The tree is generated in the engine's dialect.

The rewritten T-SQL form exposes the DATA alias and the result alias as two STRUCT
columns (``d`` and ``p``); ``d.col``, ``d.*``, ``p.label`` and ``p.*`` then resolve as
struct field access on both DuckDB and Spark, which keeps the outer query untouched.
"""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from scoring import types
from scoring.errors import PredictSyntaxError, QueryError, SchemaMismatchError, did_you_mean
from scoring.model import Model
from scoring.sql.dialects import PredictTable, read_dialect

OUT = "__scoring_out"
INNER = "__scoring_inner"


class Catalog(Protocol):
    """What the SQL front needs from an engine."""

    models: dict[str, Model]  # SQL function name -> model, as registered so far

    def function(self, model: str) -> tuple[str, Model]:
        """SQL function name and model for a bound name or a registry URI."""
        ...

    def schema(self, relation: exp.Expr) -> pa.Schema:
        """Columns of a table or subquery expression."""
        ...


def parse(sql: str, dialect: str) -> exp.Expr:
    """Parse exactly one statement; raise :class:`PredictSyntaxError` with the location."""
    try:
        statements = [s for s in sqlglot.parse(sql, dialect=read_dialect(dialect)) if s is not None]
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0]
        raise PredictSyntaxError(f"cannot parse the query as {dialect} SQL: {first}") from None
    if len(statements) != 1:
        raise PredictSyntaxError(f"expected one SQL statement, found {len(statements)}")
    return statements[0]


def normalize_ml_predict(tree: exp.Expr) -> exp.Expr:
    """Rewrite ``ML.PREDICT(MODEL m, TABLE t | (query))`` into a bigquery-style PredictTable."""
    for table in list(tree.find_all(exp.Table)):
        predict = table.this
        if not isinstance(predict, exp.Predict):
            continue
        model = predict.this
        name = model.name if isinstance(model, exp.Table) else model.sql()
        data = predict.expression
        if data is None:
            raise PredictSyntaxError("ML.PREDICT needs TABLE t or a (query) after the model")
        if predict.args.get("params_struct") is not None:
            raise PredictSyntaxError("ML.PREDICT settings (the STRUCT argument) are not supported")
        node = PredictTable(
            this=exp.Literal.string(name),
            data=data.copy(),
            alias=table.args.get("alias"),
            style=exp.Var(this="bigquery"),
        )
        table.replace(node)
    return tree


def _model_of(node: PredictTable) -> str:
    model = node.this
    if isinstance(model, exp.Literal | exp.Identifier):
        return str(model.this)
    if isinstance(model, exp.Column):
        return model.name
    raise PredictSyntaxError(f"PREDICT MODEL must be a name or a string, found {model.sql()}")


def _data_parts(node: PredictTable, default_alias: str) -> tuple[exp.Expr, str]:
    data = node.args["data"].copy()
    alias = data.alias or default_alias
    data.set("alias", None)
    if isinstance(data, exp.Subquery):
        return data, alias
    if not isinstance(data, exp.Table):
        raise PredictSyntaxError(f"PREDICT DATA must be a table or (query), found {data.sql()}")
    return data, alias


def _field(name: str) -> exp.Expr:
    """``__scoring_inner.__scoring_out.<name>``: struct field access on the model's result."""
    return exp.Dot(this=exp.column(OUT, table=INNER, quoted=True), expression=exp.to_identifier(name, quoted=True))


def _output_value(model: Model, name: str) -> exp.Expr:
    if len(model.outputs) == 1:
        return exp.column(OUT, table=INNER, quoted=True)
    return _field(name)


_DECLARED: dict[Any, pa.DataType] = {  # sqlglot DataType.Type -> Arrow
    exp.DataType.Type.BIGINT: pa.int64(),
    exp.DataType.Type.INT: pa.int32(),
    exp.DataType.Type.SMALLINT: pa.int16(),
    exp.DataType.Type.TINYINT: pa.int8(),
    exp.DataType.Type.UTINYINT: pa.uint8(),
    exp.DataType.Type.BIT: pa.bool_(),
    exp.DataType.Type.BOOLEAN: pa.bool_(),
    exp.DataType.Type.FLOAT: pa.float32(),
    exp.DataType.Type.DOUBLE: pa.float64(),
    exp.DataType.Type.DECIMAL: pa.float64(),
    **{t: pa.string() for t in exp.DataType.TEXT_TYPES},
}


def _declared_value(model: Model, column: exp.ColumnDef) -> exp.Expr:
    """The expression for one WITH column: the output, cast or turned into JSON text."""
    output = model.find_output(column.name)
    value = _output_value(model, output.name)
    kind = column.args.get("kind")
    if kind is None or kind.this == exp.DataType.Type.VARIANT:
        return value  # native type: LIST / MAP / scalar as the model returns it
    declared = _DECLARED.get(kind.this)
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
    return exp.cast(value, kind.copy())


def _call(fn: str, model: Model, alias: str, schema: pa.Schema, table: str, name: str) -> exp.Expr:
    columns = model.bind(schema, table, name=name)  # the model as the query names it
    arguments = []
    for arg, column in zip(model.arguments, columns, strict=True):
        ref: exp.Expr = exp.column(column, table=alias, quoted=True)
        element = types.onnx_element(arg.onnx_type)
        if pa.types.is_boolean(schema.field(column).type) and element != "bool":
            # bool -> number is a safe conversion, but no engine casts BOOLEAN to a number itself.
            ref = exp.cast(ref, exp.DataType.build("DOUBLE" if element in ("float", "double") else "BIGINT"))
        arguments.append(ref)
    return exp.Anonymous(this=fn, expressions=arguments)


def _expand_tsql(node: PredictTable, catalog: Catalog) -> exp.Expr:
    fn, model = catalog.function(_model_of(node))
    data, d = _data_parts(node, "d")
    p = node.alias_name or "p"
    schema = catalog.schema(data)
    table_name = data.name if isinstance(data, exp.Table) else d
    packed = exp.Struct(
        expressions=[
            exp.PropertyEQ(this=exp.to_identifier(c, quoted=True), expression=exp.column(c, table=d, quoted=True))
            for c in schema.names
        ]
    )
    inner = exp.select(
        exp.alias_(packed, d, quoted=True),
        exp.alias_(_call(fn, model, d, schema, table_name, _model_of(node)), OUT, quoted=True),
    ).from_(exp.alias_(data, d, table=True, quoted=True))
    columns = node.args.get("columns") or [exp.ColumnDef(this=exp.to_identifier(o.name)) for o in model.outputs]
    outputs = exp.Struct(
        expressions=[
            exp.PropertyEQ(this=exp.to_identifier(c.name, quoted=True), expression=_declared_value(model, c))
            for c in columns
        ]
    )
    outer = exp.select(
        exp.alias_(exp.column(d, table=INNER, quoted=True), d, quoted=True),
        exp.alias_(outputs, p, quoted=True),
    ).from_(exp.alias_(inner.subquery(), INNER, table=True, quoted=True))
    _qualify_enclosing(node, d, p, set(schema.names), {c.name for c in columns}, table_name)
    return exp.alias_(outer.subquery(), f"__scoring_predict_{p}", table=True, quoted=True)


def _predicted_name(output: str) -> str:
    base = output[len("output_") :] if output.startswith("output_") else output
    return f"predicted_{base}"


def _expand_bigquery(node: PredictTable, catalog: Catalog) -> exp.Expr:
    fn, model = catalog.function(_model_of(node))
    data, _ = _data_parts(node, "__scoring_data")
    alias = "__scoring_data"
    schema = catalog.schema(data)
    table_name = data.name if isinstance(data, exp.Table) else "(query)"
    inner = exp.select(
        exp.Column(this=exp.Star(), table=exp.to_identifier(alias)),
        exp.alias_(_call(fn, model, alias, schema, table_name, _model_of(node)), OUT, quoted=True),
    ).from_(exp.alias_(data, alias, table=True, quoted=True))
    selected: list[exp.Expr] = [exp.column(c, table=INNER, quoted=True) for c in schema.names]
    selected += [exp.alias_(_output_value(model, o.name), _predicted_name(o.name), quoted=True) for o in model.outputs]
    outer = exp.select(*selected).from_(exp.alias_(inner.subquery(), INNER, table=True, quoted=True))
    result_alias = node.alias_name or "ml_predict"
    return exp.alias_(outer.subquery(), result_alias, table=True, quoted=True)


def _check_qualified(column: exp.Column, alias: str, names: set[str], lowered: set[str], what: str) -> None:
    """``d.patient_idd``: the engine would only say a struct has no such key; name it here."""
    if column.table.lower() != alias.lower() or column.name.lower() in lowered:
        return
    raise QueryError(f"column '{column.name}' is not in {what}" + did_you_mean(column.name, sorted(names)))


def _qualify_enclosing(
    node: PredictTable, d: str, p: str, data_cols: set[str], out_cols: set[str], data_name: str
) -> None:
    """In the SELECT that reads the PREDICT, qualify bare column names and expand ``*``."""
    select = node.find_ancestor(exp.Select)
    if select is None:
        return
    data_lower = {c.lower() for c in data_cols}
    out_lower = {c.lower() for c in out_cols}
    for column in list(select.find_all(exp.Column)):
        if column.find_ancestor(exp.Select) is not select or isinstance(column.this, exp.Star):
            continue
        if column.table:
            _check_qualified(column, d, data_cols, data_lower, f"DATA '{data_name}' (alias {d})")
            _check_qualified(
                column, p, out_cols, out_lower, f"the PREDICT result (alias {p}: the outputs declared in WITH)"
            )
            continue
        name = column.name.lower()
        if name in out_lower:
            column.set("table", exp.to_identifier(p))
        elif name in data_lower:
            column.set("table", exp.to_identifier(d))
    expanded: list[exp.Expr] = []
    for projection in select.expressions:
        if isinstance(projection, exp.Star):
            expanded += [
                exp.Column(this=exp.Star(), table=exp.to_identifier(d)),
                exp.Column(this=exp.Star(), table=exp.to_identifier(p)),
            ]
            for join in select.args.get("joins") or []:
                expanded.append(exp.Column(this=exp.Star(), table=exp.to_identifier(join.this.alias_or_name)))
        else:
            expanded.append(projection)
    select.set("expressions", expanded)


def expand_predict(tree: exp.Expr, catalog: Catalog) -> exp.Expr:
    """Replace every PredictTable with a subquery calling the model's SQL function."""
    for node in list(tree.find_all(PredictTable)):
        runtime = node.args.get("runtime")
        if runtime is not None and runtime.name.upper() != "ONNX":
            raise PredictSyntaxError(f"PREDICT RUNTIME = {runtime.name} is not supported; use RUNTIME = ONNX")
        style = node.args.get("style")
        if style is not None and style.name == "bigquery":
            node.replace(_expand_bigquery(node, catalog))
        else:
            node.replace(_expand_tsql(node, catalog))
    return tree


def check_calls(tree: exp.Expr, catalog: Catalog) -> None:
    """Each plain call of a bound model passes as many arguments as the model takes.

    Engines would only say that no function matches; this names the model and its inputs.
    """
    bound = {name.lower(): (name, model) for name, model in catalog.models.items()}
    for call in tree.find_all(exp.Anonymous):
        name, model = bound.get(call.name.lower(), (None, None))
        if model is None or len(call.expressions) == len(model.arguments):
            continue
        if any(arg.is_star or isinstance(arg, exp.Columns) for arg in call.expressions):
            continue  # `m(*)`, `m(t.*)`, `m(COLUMNS(...))`: the engine expands them
        names = [a.name for a in model.arguments]
        expected = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise SchemaMismatchError(
            f"model '{name}' takes {len(model.arguments)} arguments ({expected}), "
            f"but {call.name}(...) passes {len(call.expressions)}"
        )


def compile_query(sql: str, read: str, write: str, catalog: Catalog) -> str:
    """Compile ``sql`` written in dialect ``read`` into SQL for dialect ``write``.

    Raises:
        PredictSyntaxError: the query does not parse or a PREDICT form is malformed.
        SchemaMismatchError: DATA columns or WITH declarations do not fit the model.
    """
    tree = parse(sql, read)
    check_calls(tree, catalog)
    tree = normalize_ml_predict(tree)
    tree = expand_predict(tree, catalog)
    return tree.sql(dialect=read_dialect(write))
