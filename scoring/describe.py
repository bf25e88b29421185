"""``scoring models inspect``: what a user needs to know before writing a query.

Besides the model's tensors and the columns it binds, the description answers "what will my
query return?" for each SQL form. Those answers are not derived from a copy of the SQL front's
rules: the model is run once on a few rows of zeros (so the shapes it really returns show beside
the declared ones, which converters do not always get right), and each example query is
compiled by the SQL front and run by DuckDB on a table of those rows, so the column names and
types printed are the ones a job produces. The examples are built with sqlglot from the model's
own names and are ready to copy.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from scoring import types
from scoring.cache import load_model
from scoring.errors import ScoringError
from scoring.job import registry_for
from scoring.model import Model, Output
from scoring.redact import redact_data
from scoring.settings import Settings
from scoring.sql.compile import Catalog, compile_query
from scoring.sql.dialects import PredictTable, read_dialect
from scoring.sql.qualify import Names

PROBE_ROWS = 3  # more than one, so an output of one value per batch cannot pass for one per row
DEFAULT_TABLE = "my_table"
_NOT_IDENTIFIER = re.compile(r"\W")


def sql_name(name: str) -> str:
    """A plain SQL identifier for a model name (a file stem like ``bc-v1`` -> ``bc_v1``)."""
    cleaned = _NOT_IDENTIFIER.sub("_", name) or "model"
    return f"m_{cleaned}" if cleaned[0].isdigit() else cleaned


def describe_model(uri: str, settings: Settings, name: str | None = None, table: str = DEFAULT_TABLE) -> dict[str, Any]:
    """Pin and load ``uri``; describe its tensors, binding and what each SQL form returns.

    Args:
        uri: A registry URI or a local ``.onnx`` path.
        settings: Where the registry and the cache are.
        name: SQL name the examples bind the model to; default: the registered name.
        table: Table name the examples read.
    """
    from scoring.engines import check_sql_name

    ref = registry_for(settings).resolve(uri)
    model = load_model(ref, 1, settings.null)
    bound = check_sql_name(name, "model") if name else sql_name(ref.name)
    check_sql_name(table, "table")
    returned = _probe_shapes(model)
    description = {
        "uri": uri,
        "pinned_uri": ref.pinned_uri,
        "name": ref.name,
        "version": ref.version,
        "sha256": ref.sha256,
        "signature": ref.signature,
        "binding": _binding(model),
        "inputs": [{"name": t.name, "type": t.onnx_type, "shape": _dims(t.shape)} for t in model.inputs],
        "arguments": _arguments(model),
        "outputs": [_output(o, model, returned) for o in model.outputs],
        "probe_error": returned.get("error"),  # None when the model ran on the rows of zeros
        "returns": {"duckdb": types.duckdb_type(model.output_type), "spark": types.spark_type(model.output_type)},
        "sql_name": bound,
        "table": table,
        "sql": _sql_forms(model, bound, table),
    }
    return redact_data(description)  # a URI may carry a registry password (see README "Security")


# -- tensors ---------------------------------------------------------------------------------------


def _dims(shape: tuple[Any, ...]) -> list[int | str]:
    return [d if isinstance(d, int) else "N" for d in shape]


def _binding(model: Model) -> dict[str, Any]:
    """How table columns reach the ONNX inputs, and where the column names come from."""
    if not model.matrix:
        return {"kind": "columns", "names_from": "the ONNX inputs"}
    tensor = model.inputs[0]
    return {
        "kind": "matrix",
        "tensor": tensor.name,
        "type": tensor.onnx_type,
        "shape": _dims(tensor.shape),
        "names_from": "the MLflow signature" if model.ref.signature_columns() else "no signature: generated",
    }


def _arguments(model: Model) -> list[dict[str, Any]]:
    """One entry per SQL argument: each column once, with the ONNX tensor it feeds."""
    if model.matrix:
        tensor = model.inputs[0]
        return [
            {"column": a.name, "type": types.onnx_element(a.onnx_type), "tensor": tensor.name, "index": j}
            for j, a in enumerate(model.arguments)
        ]
    return [
        {"column": a.name, "type": types.onnx_element(a.onnx_type), "tensor": t.name, "shape": _dims(t.shape)}
        for a, t in zip(model.arguments, model.inputs, strict=True)
    ]


def _probe_feeds(model: Model, n: int) -> dict[str, np.ndarray]:
    """Zeros (empty strings for text) in the layout each ONNX input declares."""
    feeds = {}
    for tensor in model.inputs:
        row = types.row_for_onnx(tensor.onnx_type, model=model.ref.uri, tensor=tensor.name)
        shape: tuple[int, ...] = (n, len(model.arguments)) if model.matrix else (n, 1)
        if len(tensor.shape) < 2:
            shape = (n,)
        feeds[tensor.name] = np.full(shape, "", dtype=object) if row.onnx == "string" else np.zeros(shape, row.numpy)
    return feeds


def _probe_shapes(model: Model) -> dict[str, Any]:
    """Output name -> the shape it returned for PROBE_ROWS rows (or {"error": ...})."""
    try:
        results = model.session.run([o.name for o in model.outputs], _probe_feeds(model, PROBE_ROWS))
    except Exception as exc:  # onnxruntime's own errors: the description still helps without it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"error": f"the model did not run on {PROBE_ROWS} rows of zeros: {first}"}
    return {
        o.name: [len(value)] if isinstance(value, list) else list(np.shape(value))
        for o, value in zip(model.outputs, results, strict=True)
    }


def _output(output: Output, model: Model, returned: dict[str, Any]) -> dict[str, Any]:
    tensor = next(t for t in model.session.get_outputs() if t.name == output.name)
    return {
        "name": output.name,
        "type": tensor.type,
        "shape": _dims(tuple(tensor.shape)),
        "returned_shape": returned.get(output.name),
        "kind": output.kind,
        "duckdb_type": types.duckdb_type(output.arrow_type),
        "spark_type": types.spark_type(output.arrow_type),
    }


# -- SQL forms -------------------------------------------------------------------------------------


def _tsql_declaration(output: Output) -> exp.DataType:
    """What a WITH clause declares for an output: its own number type, or JSON text (NVARCHAR(MAX))
    for a LIST or MAP, which T-SQL has no type for."""
    if output.kind != "scalar" or types.is_text(output.arrow_type):
        return exp.DataType.build("NVARCHAR(MAX)", dialect="tsql")
    return exp.DataType.build(types.duckdb_type(output.arrow_type), dialect="duckdb")


def _function_query(model: Model, name: str, table: str) -> exp.Expr:
    call = exp.Anonymous(this=name, expressions=[exp.column(a.name, table="t") for a in model.arguments])
    return exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier("t")), exp.alias_(call, "result")).from_(
        exp.alias_(exp.to_table(table), "t", table=True)
    )


def _bigquery_query(name: str, table: str) -> exp.Expr:
    predict = exp.Predict(this=exp.to_table(name), expression=exp.to_table(table))
    return exp.select("*").from_(exp.Table(this=predict, db=exp.to_identifier("ML")))


def _tsql_query(model: Model, name: str, table: str) -> tuple[exp.Expr, list[exp.ColumnDef]]:
    columns = [exp.ColumnDef(this=exp.to_identifier(o.name), kind=_tsql_declaration(o)) for o in model.outputs]
    predict = PredictTable(
        this=exp.Literal.string(name),
        data=exp.alias_(exp.to_table(table), "d", table=True),
        runtime=exp.Var(this="ONNX"),
        columns=columns,
        alias=exp.TableAlias(this=exp.to_identifier("p")),
    )
    selected = [exp.Column(this=exp.Star(), table=exp.to_identifier("d"))]
    selected += [exp.column(o.name, table="p") for o in model.outputs]
    return exp.select(*selected).from_(predict), columns


def _sql_forms(model: Model, name: str, table: str) -> dict[str, Any]:
    """Each form's example query and the columns it returned when run on PROBE_ROWS rows."""
    tsql, declared = _tsql_query(model, name, table)
    forms: dict[str, Any] = {
        # normalize_functions=False: the function keeps the case it was bound with.
        "function": {
            "dialect": "duckdb",
            "query": _function_query(model, name, table).sql(dialect="duckdb", normalize_functions=False),
        },
        "bigquery": {"dialect": "bigquery", "query": _bigquery_query(name, table).sql(dialect="bigquery")},
        "tsql": {
            "dialect": "tsql",
            "with": "WITH (" + ", ".join(c.sql(dialect=read_dialect("tsql")) for c in declared) + ")",
            "query": tsql.sql(dialect=read_dialect("tsql")),
        },
    }
    _run_examples(model, name, table, forms)
    return forms


def _zeros(onnx_type: str, model: Model) -> pa.Array:
    row = types.row_for_onnx(onnx_type, model=model.ref.uri, tensor=onnx_type)
    value: Any = {"string": "", "bool": False}.get(row.onnx, 0)
    return pa.array([value] * PROBE_ROWS, type=row.arrow)


def _run_examples(model: Model, name: str, table: str, forms: dict[str, Any]) -> None:
    """Compile and run each form's query on DuckDB over PROBE_ROWS rows of zeros, and add the
    columns it returned (``added``: those that are not the table's own, what the model gives)."""
    from scoring.engines.duckdb import DuckDBEngine

    inputs = {a.name.lower() for a in model.arguments}
    probe = pa.table({a.name: _zeros(a.onnx_type, model) for a in model.arguments})
    engine = DuckDBEngine(threads=1)
    try:
        with tempfile.TemporaryDirectory(prefix="scoring-inspect-") as folder:
            path = Path(folder) / f"{table}.parquet"
            pq.write_table(probe, path)
            engine.register_table(table, str(path))
            engine.register_model(name, model)
            for form in forms.values():
                # The job's catalog for one bound model and one bound table.
                catalog = Catalog(models={name: model}, schema=engine.schema, names=Names.of_bindings({table: ""}))
                try:
                    compiled = compile_query(form["query"], form["dialect"], engine.dialect, catalog)
                    schema = engine.execute(compiled, PROBE_ROWS).read_all().schema
                except Exception as exc:  # an example that fails is reported with the rest
                    translated = engine.translate(exc)
                    if not isinstance(translated, ScoringError):
                        raise  # a bug, not a fact about the model
                    form["error"] = str(translated)
                    continue
                columns = [{"name": f.name, "duckdb_type": types.duckdb_type(f.type)} for f in schema]
                form["columns"] = columns
                form["added"] = [c for c in columns if c["name"].lower() not in inputs]
    finally:
        engine.close()


# -- text ------------------------------------------------------------------------------------------


def _shape(dims: list[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _inputs_header(d: dict[str, Any]) -> list[str]:
    binding = d["binding"]
    count = len(d["arguments"])
    if binding["kind"] == "columns":
        return [f"inputs: {count} columns, one ONNX input each, bound by name:"]
    lines = [
        f"inputs: {count} columns feed the ONNX input '{binding['tensor']}' {binding['type']} "
        f"{_shape(binding['shape'])}, in this order:"
    ]
    if binding["names_from"] != "the MLflow signature":
        lines.append(
            f"  (no MLflow signature names them: PREDICT and ML.PREDICT need columns called "
            f"{binding['tensor']}_0 ... {binding['tensor']}_{count - 1}; a plain call takes any columns, by position)"
        )
    return lines


def _shape_note(o: dict[str, Any]) -> str:
    returned = o["returned_shape"]
    if returned is None:
        return ""
    if o["kind"] == "map":
        return f", returned {returned[0]} maps for {PROBE_ROWS} rows"
    return f", returned {_shape(returned)} for {PROBE_ROWS} rows"


def _columns(columns: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['name']} {c['duckdb_type']}" for c in columns)


def format_description(d: dict[str, Any]) -> str:
    """Human-readable form of :func:`describe_model`."""
    lines = [f"model {d['name']}  {d['pinned_uri']}  sha256 {d['sha256'][:16]}"]
    lines.append(f"MLflow signature: {'yes' if d['signature'] else 'none'}")
    lines += _inputs_header(d)
    for i, a in enumerate(d["arguments"], start=1):
        lines.append(f"  {i}. {a['column']} ({a['type']})" + (f" {_shape(a['shape'])}" if "shape" in a else ""))
    lines.append("outputs:" if d["probe_error"] is None else f"outputs ({d['probe_error']}):")
    for o in d["outputs"]:
        lines.append(
            f"  {o['name']}: {o['type']} declared {_shape(o['shape'])}{_shape_note(o)} -> {o['kind']}: "
            f"DuckDB {o['duckdb_type']}, Spark {o['spark_type']}"
        )
    forms = d["sql"]
    lines.append("")
    lines.append(f"example queries on table {d['table']} (each compiled and run here on {PROBE_ROWS} rows of zeros):")
    lines.append(f"plain call (DuckDB and Spark SQL; on Spark the type is {d['returns']['spark']}):")
    lines += _form_lines(forms["function"])
    lines.append("BigQuery ML.PREDICT (--dialect bigquery) adds the columns:")
    lines += _form_lines(forms["bigquery"])
    lines.append(f"T-SQL PREDICT (--dialect tsql), ready to use: {forms['tsql']['with']}")
    lines += _form_lines(forms["tsql"])
    return "\n".join(lines)


def _form_lines(form: dict[str, Any]) -> list[str]:
    if "error" in form:
        return [
            f"  (this example failed when run on {PROBE_ROWS} rows of zeros: {form['error']})",
            f"  {form['query']}",
        ]
    return [f"  -> {_columns(form['added'])}", f"  {form['query']}"]
