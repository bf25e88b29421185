"""DuckDB engine: models as vectorized Arrow UDFs, queries streamed as Arrow batches."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from scoring import storage, types
from scoring.engines import ModelCatalog, batch, check_sql_name, check_table_path
from scoring.errors import InputDataError, QueryError, QueryRefusedError, SchemaMismatchError, ScoringError
from scoring.model import Model, ScoringStats
from scoring.publish import write_parquet
from scoring.sql.dialects import read_dialect

log = logging.getLogger(__name__)

# DuckDB never casts DOUBLE to FLOAT implicitly, so float inputs are declared DOUBLE
# (any number casts to it) and narrowed to float32 when the batch reaches the model.
_PARAMETER = {
    "float": "DOUBLE",
    "double": "DOUBLE",
    "int64": "BIGINT",
    "int32": "BIGINT",
    "int16": "BIGINT",
    "int8": "BIGINT",
    "uint8": "BIGINT",
    "bool": "BOOLEAN",
    "string": "VARCHAR",
}


_NO_MATCH = re.compile(r"No function matches the given name and argument types '(?P<name>\w+)\((?P<found>.*)\)'")


_NUMERIC = re.compile(r"(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|DOUBLE|DECIMAL(\(.*\))?)$")


def _split_types(text: str) -> list[str]:
    """``'VARCHAR, DECIMAL(18, 3)'`` -> ``['VARCHAR', 'DECIMAL(18, 3)']``: commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class DuckDBEngine(ModelCatalog):
    """Run scoring queries on a DuckDB connection.

    Args:
        con: An existing connection to register models on (embedding), or None for a new
            in-memory one owned by the engine.
        threads: DuckDB threads; default: DuckDB's own (all cores).
        resolve: Called with a registry URI named inside a query (``MODEL = 'models:/bc/2'``)
            to load that model on demand.
        sandbox: Confine the SQL of an engine-owned connection to its bound tables (:meth:`seal`).
    """

    name = "duckdb"
    dialect = "duckdb"

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | None = None,
        threads: int | None = None,
        resolve: Callable[[str], Model] | None = None,
        sandbox: bool = True,
    ) -> None:
        self.owned = con is None
        self.sandbox = sandbox
        self.con = con if con is not None else duckdb.connect()
        if threads:
            self.con.execute("SET threads = ?", [threads])
        self.models: dict[str, Model] = {}
        self.uri_functions: dict[str, str] = {}
        self._resolve = resolve
        self._udf_error: ScoringError | None = None
        self._counters: dict[str, ScoringStats] = {}
        self.scoring_path: str | None = None  # "batch" or "udf", once a query is published
        self._sealed = False
        self.tables: dict[str, Any] = {}
        # Sealed before any table, model or query arrives: tables are Arrow datasets (pyarrow
        # reads the files) and models Python functions, neither of which needs DuckDB's own
        # file access, so no statement of the job ever runs unsealed.
        self.seal()

    # -- registration -------------------------------------------------------------------------

    def register_model(self, name: str, model: Model) -> None:
        """Create the SQL function ``name(arg, ...)`` returning the model's output."""
        check_sql_name(name, "model")
        engine = self
        counter = ScoringStats()  # this engine's rows for this name; model.stats spans the process

        def udf(*columns: Any) -> pa.Array:
            try:
                return model.predict(columns, counter.add)
            except ScoringError as exc:  # DuckDB would flatten it into a generic error
                engine._udf_error = exc
                raise

        # DuckDB counts parameters from the Python signature; give the variadic UDF the model's arity.
        udf.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(model.arguments))]
        )
        parameters = [duckdb.sqltype(_PARAMETER[types.onnx_element(a.onnx_type)]) for a in model.arguments]
        if name in self.models or self._has_function(name):
            # A notebook cell run twice, or a model promoted: the new model replaces the old one.
            try:
                self.con.remove_function(name)
            except duckdb.Error:
                raise SchemaMismatchError(
                    f"model '{name}': a SQL function of that name that scoring did not register exists "
                    "on this connection; bind the model under another name"
                ) from None
            log.info("model %s: replaced the SQL function of that name registered before", name)
        self.con.create_function(  # type: ignore[call-overload]  # stubs want enum members
            name,
            udf,
            parameters,
            duckdb.sqltype(types.duckdb_type(model.output_type)),
            type="arrow",
            null_handling="special",
            # Marked volatile so DuckDB never duplicates the call into a pushed-down filter
            # or per struct field: each row reaches the model exactly once.
            side_effects=True,
        )
        self.models[name] = model
        self._counters[name] = counter

    def _has_function(self, name: str) -> bool:
        rows = self.con.execute(
            "SELECT 1 FROM duckdb_functions() WHERE lower(function_name) = lower(?) LIMIT 1", [name]
        ).fetchall()
        return bool(rows)

    def register_table(self, name: str, path: str) -> None:
        """Expose Parquet at ``path`` (a file, a folder of files, or a glob; local or on an object
        store) as table ``name``.

        The table is a pyarrow dataset registered on the connection, read one row group at a
        time (:mod:`scoring.engines.table_scan`): DuckDB pushes the columns and filters of a
        query down into its scan, the files are read through pyarrow's
        filesystems (S3, GCS, Azure without DuckDB's httpfs extension), and the scan needs no
        file access of DuckDB's own, so it still works with ``enable_external_access = false``
        (the engine's sandbox, :meth:`seal`).
        """
        check_table_path(name, path)
        try:
            dataset = storage.open_dataset(path)
        except ScoringError as exc:
            raise type(exc)(f"table '{name}': {exc}") from None
        # Imported here, as storage imports pyarrow.dataset: it imports pandas where installed (~0.3 s).
        from scoring.engines import table_scan

        # Scanned one row group at a time: pyarrow's own scanner reads ahead without limit (table_scan).
        streamed = table_scan.streamed(dataset)
        self.tables[name] = streamed  # the connection holds a reference only while this one lives
        self.con.register(name, streamed)

    def seal(self) -> None:
        """Confine the job's SQL to its bound tables and models (engine-owned connections only).

        After this, DuckDB opens no file, URL or extension of its own (``read_text``,
        ``read_csv``, ``glob``, ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD`` are refused) and no
        ``SET`` can undo it. A connection handed in by an embedding program is the host's to
        configure and is left alone. See the README's "Security" section.
        """
        if self.owned and self.sandbox and not self._sealed:
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET lock_configuration = true")
            self._sealed = True

    # -- the SQL front's catalog ---------------------------------------------------------------

    def schema(self, relation: exp.Expr) -> pa.Schema:
        """Arrow schema of a table or subquery, read from DuckDB without scanning rows."""
        sql = (
            relation.this.sql(dialect=read_dialect("duckdb"))
            if isinstance(relation, exp.Subquery)
            else exp.select("*").from_(relation).sql(dialect=read_dialect("duckdb"))
        )
        self.seal()  # idempotent; sealed at construction already
        try:
            return self.con.sql(sql).limit(0).to_arrow_table().schema
        except duckdb.Error as exc:
            raise _query_error(exc) from None

    def run_statement(self, sql: str) -> None:
        """Run a script statement that creates a temp view or table (the SQL front built it)."""
        self._udf_error = None
        try:
            self.con.execute(sql)
        except duckdb.Error as exc:
            raise self.translate(exc) from None

    def columns(self, sql: str) -> list[str]:
        """Column names of a query as it returns them (repeats kept), without running it."""
        try:
            return list(self.con.sql(sql).columns)
        except duckdb.Error as exc:
            raise self.translate(exc) from None

    def first_rows(self, sql: str, limit: int) -> list[tuple[Any, ...]]:
        """At most ``limit`` rows of a small query, such as a model-table subquery."""
        try:
            return self.con.sql(sql).limit(limit).fetchall()
        except duckdb.Error as exc:
            raise self.translate(exc) from None

    # -- execution -----------------------------------------------------------------------------

    def execute(self, sql: str, batch_rows: int) -> pa.RecordBatchReader:
        """Start ``sql`` and return a stream of Arrow record batches."""
        self._udf_error = None
        self.seal()
        try:
            return _arrow_reader(self.con.sql(sql), batch_rows)
        except duckdb.Error as exc:
            raise self.translate(exc) from None

    def publish(
        self,
        sql: str,
        output: str,
        metadata: dict[str, Any],
        settings: Any,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Stream the query's batches into one Parquet file published atomically at ``output``."""
        try:
            reader = batch.reader_for(self, sql, settings, metadata) or self.execute(sql, settings.row_group_rows)
        except duckdb.Error as exc:  # the batch path starts its scan here
            raise self.translate(exc) from None
        try:
            written = write_parquet(
                reader, output, metadata, mode=settings.mode, compression=settings.compression, on_batch=on_batch
            )
        except BaseException as exc:
            # A stream abandoned half-read keeps DuckDB's threads calling the model; stopped and
            # released here, not at interpreter exit (where that crashes the process).
            self.con.interrupt()
            reader.close()
            if isinstance(exc, ScoringError) or not isinstance(exc, Exception):
                raise
            translated = self.translate(exc)
            if translated is exc:
                raise
            raise translated from None
        return written.rows

    def details(self) -> dict[str, Any]:
        """What the run manifest records: which path scored the rows (scoring.engines.batch)."""
        return {"scoring_path": self.scoring_path} if self.scoring_path else {}

    def rows_scored(self) -> dict[str, int]:
        """Rows each registered function has run through its model on this engine."""
        return {name: counter.rows for name, counter in self._counters.items()}

    def translate(self, exc: BaseException) -> BaseException:
        """Map a DuckDB error (possibly raised by a model UDF) to a typed error."""
        if self._udf_error is not None:
            return self._udf_error
        if isinstance(exc, duckdb.BinderException):
            mismatch = self._call_mismatch(_first_line(exc))
            if mismatch is not None:
                return mismatch
        if isinstance(exc, duckdb.Error):
            return _query_error(exc)
        return exc

    def _call_mismatch(self, message: str) -> ScoringError | None:
        """DuckDB's "no function matches 'm(VARCHAR, ...)'" for a model, said in the model's terms."""
        match = _NO_MATCH.search(message)
        if match is None:
            return None
        name = next((n for n in self.models if n.lower() == match["name"].lower()), None)
        if name is None:
            return None
        arguments = self.models[name].arguments
        found = _split_types(match["found"])
        if len(found) != len(arguments):
            return SchemaMismatchError(
                f"model '{name}' takes {len(arguments)} arguments, but the call passes {len(found)} ({match['found']})"
            )
        for position, (arg, passed) in enumerate(zip(arguments, found, strict=False), start=1):
            wanted = _PARAMETER[types.onnx_element(arg.onnx_type)]
            if passed.endswith("_LITERAL"):  # DuckDB's name for a constant: it casts to fit
                continue
            if passed != wanted and not (wanted in ("DOUBLE", "BIGINT") and _NUMERIC.match(passed)):
                return SchemaMismatchError(
                    f"model '{name}' argument {position} ({arg.name}) expects {wanted}, but the call passes {passed}"
                )
        return SchemaMismatchError(f"model '{name}' cannot take ({match['found']})")

    def interrupt(self) -> None:
        """Ask DuckDB to stop the running query (safe from another thread)."""
        self.con.interrupt()

    def close(self) -> None:
        """Close the connection if the engine opened it."""
        if self.owned:
            self.con.close()


def _query_error(exc: BaseException) -> ScoringError:
    message = _first_line(exc)
    if isinstance(exc, duckdb.PermissionException):  # the sandbox of DuckDBEngine.seal
        return QueryRefusedError(
            f"query refused: it reaches outside the tables and models bound to the job ({message})"
        )
    if isinstance(exc, duckdb.CatalogException) and "Table with name" in message:
        return InputDataError(message)
    if isinstance(exc, duckdb.InvalidInputException):
        # The bound tables are pyarrow datasets: a file that pyarrow cannot read (a corrupt
        # footer, a truncated page) fails DuckDB's scan with this class, as on Spark (exit 9).
        return InputDataError(message)
    return QueryError(message)


def _arrow_reader(relation: duckdb.DuckDBPyRelation, batch_rows: int) -> pa.RecordBatchReader:
    """Stream a relation as Arrow batches: ``to_arrow_reader`` from DuckDB 1.4 on, ``fetch_arrow_reader`` before."""
    to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return to_reader(batch_rows)
