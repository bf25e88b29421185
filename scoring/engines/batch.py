"""The DuckDB engine's big-batch path: score whole Arrow batches, not 2,048-row vectors.

A model registered as a DuckDB UDF is called once per 2,048-row vector, under the GIL,
with a round trip through DuckDB's Arrow conversion each time. For the most common job,
a projection of one table through models (``SELECT *, m(...) FROM t``, T-SQL
``SELECT d.*, p.* FROM PREDICT(...)``, ``ML.PREDICT(MODEL m, TABLE t)``), none of that is
needed: DuckDB can stream the table's columns as row-group-sized Arrow batches, each
batch is scored with one ``session.run``, and the output batch is assembled from the
input's columns and the scores without copying either.

:func:`plan` recognises that shape on the compiled query, conservatively: one table, no
filter, join, grouping, ordering, limit, window, CTE or set operation at any level, and
every projection a column, a star, a struct built or read by the compiled PREDICT forms,
or a call of a registered model on plain columns. Anything else returns None and the job
runs the query as it is (the UDF path). What the batch path returns is identical to what
the UDF path returns: same column names and types (taken from DuckDB's own schema of the
compiled query), same values (model arguments cast by DuckDB exactly as the UDF call
would), same NULL handling (:meth:`Model.predict`), same rows-scored counts.

:func:`scored_batches` runs it as a pipeline: a reader thread pulls DuckDB's batches and
hands each to a pool of scorer threads (onnxruntime releases the GIL while it runs), and
the caller's thread receives the scored batches in input order, so that the Parquet writer
(which also releases the GIL while it encodes) overlaps with both.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from scoring.model import Model
from scoring.sql.dialects import read_dialect

BATCH = "batch"
UDF = "udf"

# -- the shape, read off the compiled tree ------------------------------------------------------


class _Unsupported(Exception):
    """The query is not a projection of one table through models: use the UDF path."""


@dataclass(frozen=True)
class _Base:
    """A column of the one table, as named in its schema."""

    name: str


@dataclass(frozen=True)
class _Call:
    """The whole result of model call number ``index``."""

    index: int


@dataclass(frozen=True)
class _Field:
    """One output of a multi-output model call (a field of its STRUCT)."""

    call: int
    name: str


@dataclass(frozen=True)
class _Pack:
    """A STRUCT the query builds (the compiled PREDICT forms pack the DATA row into one)."""

    fields: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class _Arg:
    """One model argument: a column of the table, optionally cast by the query itself."""

    column: str
    cast: exp.DataType | None


@dataclass(frozen=True)
class _CallSite:
    function: str  # the SQL function name, as registered
    model: Model
    args: tuple[_Arg, ...]


_Value = Any  # _Base | _Call | _Field | _Pack
_Env = list[tuple[str, _Value]]
_SELECT_ARGS = {"expressions", "from", "from_"}  # sqlglot renamed "from" to "from_"


def _unique(env: Sequence[tuple[str, _Value]], name: str) -> _Value:
    found = [value for key, value in env if key.lower() == name.lower()]
    if len(found) != 1:
        raise _Unsupported(f"'{name}' is not one column here")
    return found[0]


def _only_args(node: exp.Expr, allowed: set[str]) -> None:
    for key, value in node.args.items():
        if key not in allowed and value not in (None, False, []):
            raise _Unsupported(f"{type(node).__name__} with {key}")


class _Shape:
    """Symbolic evaluation of the compiled tree: what each output column is made of."""

    def __init__(self, models: dict[str, Model], columns: Callable[[exp.Table], list[str]]) -> None:
        self.models = {name.lower(): (name, model) for name, model in models.items()}
        self.columns = columns
        self.table: exp.Table | None = None
        self.calls: list[_CallSite] = []

    def select(self, select: exp.Expr) -> _Env:
        if type(select) is not exp.Select:
            raise _Unsupported(type(select).__name__)
        _only_args(select, _SELECT_ARGS)
        source = select.args.get("from_") or select.args.get("from")
        if source is None:
            raise _Unsupported("no FROM")
        _only_args(source, {"this"})
        alias, env = self.relation(source.this)
        out: _Env = []
        for projection in select.expressions:
            out += self.projection(projection, alias, env)
        return out

    def relation(self, node: exp.Expr) -> tuple[str, _Env]:
        if type(node) is exp.Table:
            if self.table is not None:
                raise _Unsupported("more than one table")
            _only_args(node, {"this", "alias"})
            alias = node.args.get("alias")
            if alias is not None:
                _only_args(alias, {"this"})  # no column aliases: t AS d(a, b)
            if not isinstance(node.this, exp.Identifier):
                raise _Unsupported("a table function")
            self.table = node
            return node.alias_or_name, [(c, _Base(c)) for c in self.columns(node)]
        if type(node) is exp.Subquery:
            _only_args(node, {"this", "alias"})
            alias = node.args.get("alias")
            if alias is not None:
                _only_args(alias, {"this"})
            return node.alias_or_name, self.select(node.this)
        raise _Unsupported(type(node).__name__)

    def projection(self, node: exp.Expr, alias: str, env: _Env) -> _Env:
        if type(node) is exp.Star:
            _only_args(node, set())  # no EXCLUDE / REPLACE / RENAME
            return list(env)
        if type(node) is exp.Column and type(node.this) is exp.Star:
            _only_args(node.this, set())
            parts = [p.name for p in node.parts[:-1]]
            if len(parts) == 1 and parts[0].lower() == alias.lower():
                if any(key.lower() == alias.lower() for key, _ in env):
                    raise _Unsupported(f"'{alias}' is a table and a column")
                return list(env)
            return self.expand(self.path(parts, alias, env))
        if type(node) is exp.Alias:
            return [(node.alias, self.value(node.this, alias, env))]
        return [(node.alias_or_name, self.value(node, alias, env))]

    def expand(self, value: _Value) -> _Env:
        """``x.*`` of a STRUCT value: its fields, in order."""
        if isinstance(value, _Pack):
            return list(value.fields)
        if isinstance(value, _Call):
            model = self.calls[value.index].model
            if len(model.outputs) > 1:
                return [(o.name, _Field(value.index, o.name)) for o in model.outputs]
        raise _Unsupported("star of a value that is not a STRUCT")

    def path(self, parts: list[str], alias: str, env: _Env) -> _Value:
        """``a.b.c``: a column of the relation aliased ``a``, or a column ``a`` and its fields."""
        if len(parts) >= 2 and parts[0].lower() == alias.lower():
            if any(key.lower() == alias.lower() for key, _ in env):
                raise _Unsupported(f"'{alias}' is a table and a column")
            parts = parts[1:]
        value = _unique(env, parts[0])
        for name in parts[1:]:
            value = self.field(value, name)
        return value

    def field(self, value: _Value, name: str) -> _Value:
        if isinstance(value, _Pack):
            return _unique(value.fields, name)
        if isinstance(value, _Call):
            model = self.calls[value.index].model
            found = [o.name for o in model.outputs if o.name.lower() == name.lower()]
            if len(model.outputs) > 1 and len(found) == 1:
                return _Field(value.index, found[0])
        raise _Unsupported(f"field '{name}' of a value that is not a STRUCT")

    def value(self, node: exp.Expr, alias: str, env: _Env) -> _Value:
        kind = type(node)
        if isinstance(node, exp.Column) and kind is exp.Column and isinstance(node.this, exp.Identifier):
            return self.path([p.name for p in node.parts], alias, env)
        if kind is exp.Dot and isinstance(node.expression, exp.Identifier):
            return self.field(self.value(node.this, alias, env), node.expression.name)
        if kind is exp.Paren:
            return self.value(node.this, alias, env)
        if kind is exp.Struct:
            fields = []
            for item in node.expressions:
                if type(item) is not exp.PropertyEQ or not isinstance(item.this, exp.Identifier):
                    raise _Unsupported("a STRUCT entry that is not name := value")
                fields.append((item.this.name, self.value(item.expression, alias, env)))
            return _Pack(tuple(fields))
        if isinstance(node, exp.Anonymous) and kind is exp.Anonymous:
            return self.call(node, alias, env)
        raise _Unsupported(kind.__name__)

    def call(self, node: exp.Anonymous, alias: str, env: _Env) -> _Call:
        bound = self.models.get(str(node.this).lower())
        if bound is None:
            raise _Unsupported(f"function {node.this} is not a model")
        function, model = bound
        if len(node.expressions) != len(model.arguments):
            raise _Unsupported("star arguments or an arity mismatch (the engine reports it)")
        args = []
        for arg in node.expressions:
            cast = None
            if type(arg) is exp.Cast and not arg.args.get("format"):
                cast, arg = arg.to, arg.this
            value = self.value(arg, alias, env)
            if not isinstance(value, _Base):
                raise _Unsupported("a model argument that is not a column of the table")
            args.append(_Arg(value.name, cast))
        self.calls.append(_CallSite(function, model, tuple(args)))
        return _Call(len(self.calls) - 1)


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    """Where output column ``i`` comes from: a column of the read batch or a model's result."""

    read: int | None = None
    call: int | None = None
    field: int | None = None  # position of the output in the call's STRUCT


@dataclass(frozen=True)
class BatchPlan:
    """How to run a projection of one table through models as whole batches.

    Attributes:
        read_sql: DuckDB query reading the columns the output keeps and the model arguments
            (cast to the function's parameter types) from the table, nothing else.
        schema: the output schema, exactly as DuckDB returns it for the compiled query.
        columns: per output column, where it comes from.
        calls: per model call: the function, the model and the read columns of its arguments.
    """

    read_sql: str
    schema: pa.Schema
    columns: tuple[_Column, ...]
    calls: tuple[tuple[str, Model, tuple[int, ...]], ...]


def _schema(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[pa.Schema, list[str]]:
    """Arrow schema and DuckDB type names of a query, without scanning rows (or calling a model)."""
    relation = con.sql(sql).limit(0)
    reader = _arrow_reader(relation, 1)
    schema = reader.schema
    reader.close()
    return schema, [str(t) for t in relation.types]


def _parameters(con: duckdb.DuckDBPyConnection, function: str) -> list[str]:
    rows = con.execute(
        "SELECT parameter_types FROM duckdb_functions() WHERE function_name = ? AND function_type = 'scalar'",
        [function],
    ).fetchall()
    if len(rows) != 1:
        raise _Unsupported(f"function {function} has {len(rows)} overloads")
    return [str(t) for t in rows[0][0]]


def plan(con: duckdb.DuckDBPyConnection, sql: str, models: dict[str, Model]) -> BatchPlan | None:
    """A :class:`BatchPlan` for ``sql`` (compiled DuckDB SQL), or None where only the UDF path is exact."""
    dialect = read_dialect("duckdb")
    try:
        tree = sqlglot.parse_one(sql, dialect=dialect)
        target, _ = _schema(con, sql)  # binds the query: a query DuckDB refuses fails on the UDF path, as before

        def columns(table: exp.Table) -> list[str]:
            bare = table.copy()
            bare.set("alias", None)
            return list(_schema(con, exp.select("*").from_(bare).sql(dialect=dialect))[0].names)

        shape = _Shape(models, columns)
        outputs = shape.select(tree)
        if not shape.calls or shape.table is None or len(outputs) != len(target):
            return None
        used = {v.index if isinstance(v, _Call) else v.call for _, v in outputs if isinstance(v, _Call | _Field)}
        if used != set(range(len(shape.calls))):
            return None  # a call whose result is dropped: whether DuckDB runs it is its own business
        return _build(con, dialect, shape, [v for _, v in outputs], target)
    except (_Unsupported, SqlglotError, duckdb.Error):
        return None


def _build(con: Any, dialect: Any, shape: _Shape, outputs: list[_Value], target: pa.Schema) -> BatchPlan | None:
    table = shape.table.copy()  # type: ignore[union-attr]
    table.set("alias", None)
    _, base_types = _schema(con, exp.select("*").from_(table).sql(dialect=dialect))
    base_names = shape.columns(table)
    types = dict(zip((n.lower() for n in base_names), base_types, strict=True))
    read: list[exp.Expr] = []
    index: dict[str, int] = {}  # SQL text of a read expression -> its position

    def add(expression: exp.Expr) -> int:
        key = expression.sql(dialect=dialect)
        if key not in index:
            index[key] = len(read)
            read.append(exp.alias_(expression, f"__scoring_{len(read)}", quoted=True))
        return index[key]

    columns: list[_Column] = []
    for value in outputs:
        if isinstance(value, _Base):
            columns.append(_Column(read=add(exp.column(value.name, quoted=True))))
        elif isinstance(value, _Call):
            columns.append(_Column(call=value.index))
        elif isinstance(value, _Field):
            names = [o.name for o in shape.calls[value.call].model.outputs]
            columns.append(_Column(call=value.call, field=names.index(value.name)))
        else:
            return None  # a whole packed STRUCT as an output column
    calls = []
    for site in shape.calls:
        positions = []
        for arg, parameter in zip(site.args, _parameters(con, site.function), strict=True):
            ref: exp.Expr = exp.column(arg.column, quoted=True)
            if arg.cast is not None:
                ref = exp.Cast(this=ref, to=arg.cast.copy())
            elif types[arg.column.lower()] == parameter:
                positions.append(add(ref))  # the column as the output keeps it: read once
                continue
            # What DuckDB does implicitly to a UDF argument, done explicitly (the query bound, so it is valid).
            positions.append(add(exp.cast(ref, exp.DataType.build(parameter, dialect=dialect))))
        calls.append((site.function, site.model, tuple(positions)))
    read_sql = exp.select(*read).from_(table).sql(dialect=dialect)
    read_schema, _ = _schema(con, read_sql)
    for column, field in zip(columns, target, strict=True):
        if column.read is not None:
            if read_schema.field(column.read).type != field.type:
                return None
            continue
        model = calls[column.call][1]  # type: ignore[index]
        produced = model.output_type if column.field is None else model.outputs[column.field].arrow_type
        if not _same_layout(produced, field.type):
            return None
    return BatchPlan(read_sql, target, tuple(columns), tuple(calls))


def _same_layout(produced: pa.DataType, wanted: pa.DataType) -> bool:
    """Equal but for the names Arrow gives list and map children (DuckDB: ``l``; pyarrow: ``item``).

    Then ``Array.view`` relabels the model's array in place: no copy, and no ``pyarrow.compute``
    import (``cast`` would cost both).
    """
    if produced == wanted:
        return True
    if produced.id != wanted.id or produced.num_fields != wanted.num_fields or not pa.types.is_nested(produced):
        return False
    if pa.types.is_struct(produced) and [f.name for f in produced] != [f.name for f in wanted]:  # type: ignore[attr-defined]
        return False
    return all(
        _same_layout(produced.field(i).type, wanted.field(i).type)
        and produced.field(i).nullable == wanted.field(i).nullable
        for i in range(produced.num_fields)
    )


# -- running it -------------------------------------------------------------------------------


def _arrow_reader(relation: duckdb.DuckDBPyRelation, batch_rows: int) -> pa.RecordBatchReader:
    # ``to_arrow_reader`` from DuckDB 1.4 on, ``fetch_arrow_reader`` before.
    to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return to_reader(batch_rows)


def _scorer(plan: BatchPlan, counters: dict[str, Callable[[int], None]]) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    def score(batch: pa.RecordBatch) -> pa.RecordBatch:
        results = [
            model.predict([batch.column(i) for i in args], counters.get(function))
            for function, model, args in plan.calls
        ]
        fields: dict[int, list[pa.Array]] = {}
        arrays = []
        for column, target in zip(plan.columns, plan.schema, strict=True):
            if column.read is not None:
                array = batch.column(column.read)
            elif column.field is None:
                array = results[column.call]  # type: ignore[index]
            else:
                if column.call not in fields:
                    # flatten(), not field(): a NULL result row makes each of its fields NULL too.
                    fields[column.call] = results[column.call].flatten()  # type: ignore[index]
                array = fields[column.call][column.field]  # type: ignore[index]
            arrays.append(array if array.type == target.type else array.view(target.type))
        return pa.RecordBatch.from_arrays(arrays, schema=plan.schema)

    return score


def default_workers() -> int:
    """Scorer threads: one per core (each runs the job's session; onnxruntime releases the GIL)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def scored_batches(
    con: duckdb.DuckDBPyConnection,
    plan: BatchPlan,
    batch_rows: int,
    counters: dict[str, Callable[[int], None]] | None = None,
    workers: int | None = None,
) -> pa.RecordBatchReader:
    """Run ``plan``: DuckDB's batches scored by ``workers`` threads, handed back in input order.

    ``counters`` maps a function name to a callable told how many rows its model scored.
    Closing the returned reader early stops the reader thread and the scorers.
    """
    source = _arrow_reader(con.sql(plan.read_sql), batch_rows)
    stream = _pipeline(source, _scorer(plan, counters or {}), workers or default_workers())
    return pa.RecordBatchReader.from_batches(plan.schema, stream)


_DONE = object()


def _pipeline(
    source: pa.RecordBatchReader, score: Callable[[pa.RecordBatch], pa.RecordBatch], workers: int
) -> Iterator[pa.RecordBatch]:
    # At most `workers + 1` batches wait scored or being scored, plus one being read and one
    # being written: memory stays flat in the number of rows.
    ahead: queue.Queue[Any] = queue.Queue(maxsize=workers + 1)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scoring-score")

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read() -> None:
        try:
            for batch in source:
                if stop.is_set():
                    break
                if batch.num_rows:
                    put(pool.submit(score, batch))
        except BaseException as exc:  # handed to the consumer, which raises it as the UDF path would
            put(exc)
        finally:
            source.close()
            put(_DONE)

    reader = threading.Thread(target=read, name="scoring-read", daemon=True)
    reader.start()
    try:
        while True:
            item = ahead.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            future: Future[pa.RecordBatch] = item
            yield future.result()
    finally:
        stop.set()
        reader.join()
        pool.shutdown(wait=True, cancel_futures=True)


def reader_for(engine: Any, sql: str, settings: Any, metadata: dict[str, Any]) -> pa.RecordBatchReader | None:
    """The batch path's scored batches for ``sql`` on a DuckDB engine, or None for the UDF path.

    Records the path taken as ``metadata["scoring_path"]`` (``"batch"`` or ``"udf"``).
    """
    found = None if getattr(settings, "batch_scoring", "auto") == "off" else plan(engine.con, sql, engine.models)
    metadata["scoring_path"] = engine.scoring_path = UDF if found is None else BATCH
    if found is None:
        return None
    engine._udf_error = None
    counters = {name: counter.add for name, counter in engine._counters.items()}
    return scored_batches(engine.con, found, settings.row_group_rows, counters, settings.threads)
