"""Orchestration of one scoring job: pin models, register them, compile, run, publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scoring import __version__, publish, storage
from scoring.cache import default_threads, load_model
from scoring.engines import check_sql_name, check_table_path
from scoring.errors import ExitCode, JobInterrupted, ModelLoadError, ScoringError
from scoring.model import Model
from scoring.redact import redact_data
from scoring.registry import ModelRef, Registry
from scoring.sandbox import check_sql, check_unique_names
from scoring.settings import Settings
from scoring.sql import compile as sqlc
from scoring.sql import scripts
from scoring.sql.dialects import read_dialect
from scoring.sql.models import model_value, stage_bytes
from scoring.sql.qualify import Names, binding_parts, deduplicated, engine_name
from scoring.sql.references import Reference

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """What to score: models and tables bound to SQL names, a query and an output path."""

    models: dict[str, str]
    tables: dict[str, str]
    query: str
    output: str  # a path or URI, kept as a string: Path("hdfs://nn/x") would be hdfs:/nn/x
    dialect: str | None = None

    def __post_init__(self) -> None:
        self.output = str(self.output)


@dataclass
class JobResult:
    """What a finished job did."""

    output: str
    rows: int
    seconds: float
    models: dict[str, ModelRef]
    rows_scored: dict[str, int | None] = field(default_factory=dict)  # None: not counted (Spark Connect)
    sql: str = ""
    engine_details: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        """Output rows per wall-clock second."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def registry_for(settings: Settings) -> Registry:
    """The registry the settings point at."""
    return Registry(
        settings.resolved_tracking_uri(),
        settings.resolved_cache_dir(),
        registry_uri=settings.registry_uri,
        timeout=settings.registry_timeout,
        retries=settings.registry_retries,
        max_bytes=settings.model_max_bytes,
    )


def open_engine(settings: Settings, resolve: Callable[[str], Model]) -> Any:
    """Start the engine the settings name (each engine module is imported only here)."""
    if settings.engine == "spark":
        from scoring.engines.spark import SparkEngine

        return SparkEngine(
            master=settings.spark_master,
            resolve=resolve,
            null=settings.null,
            jvm_log=Path(settings.home) / "logs" / "spark.log",
            remote=settings.spark_remote,
            udf=settings.spark_udf,
        )
    from scoring.engines.duckdb import DuckDBEngine

    return DuckDBEngine(threads=settings.threads, resolve=resolve, sandbox=not settings.host_access)


def manifest_path(output: str, *, failed: bool = False) -> str:
    """Where the run manifest of a job writing ``output`` goes, beside it.

    ``<name>.run.json`` describes the run that published the result at ``output``;
    ``<name>.failed.run.json`` the latest run that failed (so a failure never hides the
    record of the result still in place). A successful run removes the latter. On an object
    store these are objects beside the output, written in one PUT each.
    """
    base, sep, query = str(output).rstrip("/").partition("?")
    return f"{base}.{'failed.' if failed else ''}run.json{sep}{query}"


def run_job(spec: JobSpec, settings: Settings, on_batch: Callable[[int], None] | None = None) -> JobResult:
    """Run one job end to end, publish its Parquet result atomically, and write its run manifest.

    The manifest (:func:`manifest_path`) records the pinned models, inputs, output, row counts,
    timings and the exit status, for a failed run too, so a scheduler can see what happened.

    Raises:
        ScoringError: a subclass naming what was wrong; nothing is published.
    """
    JobInterrupted.clear()  # a stop belongs to the job it interrupted, not to later ones
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    manifest: dict[str, Any] = {
        "scoring_version": __version__,
        "started_at": started_at,
        "engine": settings.engine,
        "models_requested": {name: storage.redact(uri) for name, uri in spec.models.items()},
        "tables": {name: storage.redact(uri) for name, uri in spec.tables.items()},
        "output": storage.redact(spec.output),
    }
    try:
        result = _run(spec, settings, on_batch, started)
    except Exception as exc:
        # A stop signal that surfaced through the engine as some other error (a broken gateway
        # call, a query error) is still a stop.
        failure = JobInterrupted.pending() or (exc if isinstance(exc, ScoringError) else None)
        if failure is None:  # a bug: still on record for the scheduler, then raised as it is
            first = (str(exc).strip().splitlines() or [""])[0]
            manifest.update(
                status="failed", exit_code=int(ExitCode.INTERNAL), error=storage.scrub(f"{type(exc).__name__}: {first}")
            )
            _write_manifest(spec, manifest, started)
            raise
        manifest.update(status="failed", exit_code=failure.exit_code, error=storage.scrub(str(failure)))
        _write_manifest(spec, manifest, started)
        if failure is exc:
            raise
        raise failure from None
    manifest.update(
        status="succeeded",
        exit_code=0,
        rows=result.rows,
        rows_scored=result.rows_scored,
        models={name: ref.describe() for name, ref in result.models.items()},
        **result.engine_details,
    )
    _write_manifest(spec, manifest, started)
    return result


def _write_manifest(spec: JobSpec, manifest: dict[str, Any], started: float) -> None:
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    failed = manifest["status"] == "failed"
    path = manifest_path(spec.output, failed=failed)
    if storage.is_hadoop(path):  # only the Spark session reaches it: the folder's _scoring.json records the run
        log.info("run manifest not written beside %s (a Hadoop URI)", storage.redact(spec.output))
        return
    try:
        publish.write_json(path, redact_data(manifest))
        if not failed:
            publish.remove(manifest_path(spec.output, failed=True))
    except (OSError, ScoringError) as exc:  # the manifest must never hide the job's own outcome
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        # After a failure the job's own error is the line that matters (a refused credential
        # refuses the manifest too); after a success a missing record is worth a warning.
        level = logging.DEBUG if failed else logging.WARNING
        log.log(level, "run manifest %s not written: %s", storage.redact(path), storage.scrub(reason))


def _run(spec: JobSpec, settings: Settings, on_batch: Callable[[int], None] | None, started: float) -> JobResult:
    output = spec.output
    spark = settings.engine == "spark"
    if not (spark and storage.is_remote(output)):  # Hadoop's URIs are checked through the Spark session
        publish.check_target(output, settings.mode, folder=spark)
    for what, bound in (("model", spec.models), ("table", spec.tables)):
        check_unique_names(what, bound)
    for name in spec.models:
        check_sql_name(name, "model")
    for name, path in spec.tables.items():
        check_table_path(name, path, hadoop=spark)
    names = Names.of_bindings(spec.tables)
    dialect = spec.dialect or settings.dialect or settings.engine
    source = read_dialect(dialect)  # a typo fails before any registry call
    if not settings.host_access:
        check_sql(spec.query, source, strict=False)  # before any engine sees the text (scoring.sandbox)
    steps = scripts.plan(spec.query, dialect)  # a refused statement fails before anything runs
    if settings.engine == "spark":  # a missing pyspark fails before any registry call too
        from scoring.engines.spark_udfs import require_pyspark

        require_pyspark()

    registry = registry_for(settings)
    engine_threads = settings.threads or default_threads()
    ort_threads = settings.ort_threads or default_threads(engine_threads)
    refs: dict[str, ModelRef] = {}

    def resolve(uri: str) -> Model:
        return load_model(registry.resolve(uri), ort_threads, settings.null)

    models = {name: resolve(uri) for name, uri in spec.models.items()}
    refs = {name: models[name].ref for name in spec.models}  # the registry has logged each pin, once

    engine = open_engine(settings, resolve)
    try:
        for name, path in spec.tables.items():
            engine.register_table(engine_name(binding_parts(name)), path)
        for name, model in models.items():
            engine.register_model(name, model)

        def resolve_reference(ref: Reference) -> tuple[str, Model]:
            model = _model_of_reference(ref, engine, registry, settings, ort_threads, resolve)
            fn = ref.function_name()
            engine.register_model(fn, model)
            engine.uri_functions[fn] = ref.written
            refs[ref.written] = model.ref
            if ref.kind != "uri":  # a URI's pin is logged by the registry already: one line per model
                log.info("model %s -> %s (sha256 %s)", ref.written, model.ref.pinned_uri, model.ref.sha256[:12])
            return fn, model

        catalog = sqlc.Catalog(models=dict(models), schema=engine.schema, names=names)
        sandboxed = None if settings.host_access else (lambda text: check_sql(text, engine.dialect))
        sql = compile_script(steps, catalog, engine, resolve_reference, dialect, engine.dialect, sandboxed)
        log.debug("compiled SQL: %s", sql)
        metadata = run_metadata(spec, refs, engine.name, dialect, sql)
        rows = engine.publish(sql, output, metadata, settings, on_batch)
        # Bound names as given; a model named inside the query as written there (as in `refs`).
        fn_names = {**{name: name for name in models}, **engine.uri_functions}
        scored = {fn_names[fn]: count for fn, count in engine.rows_scored().items() if fn in fn_names}
        details = engine.details()
    finally:
        _drop_created(engine, names)
        engine.close()
    seconds = time.perf_counter() - started
    return JobResult(output, rows, seconds, refs, scored, sql, details)


def _drop_created(engine: Any, names: Names) -> None:
    """Views and temp tables of the script: gone once the job ends (an embedding session stays)."""
    for key, name in names.created.items():
        kind = "table" if name.startswith("__scoring_tmp_") else "view"
        try:
            engine.run_statement(scripts.drop_sql(name, engine.dialect, kind))
        except ScoringError as exc:  # never hide the job's own outcome
            log.warning("could not drop %s of the script: %s", ".".join(key), exc)


def _model_of_reference(
    ref: Reference, engine: Any, registry: Registry, settings: Settings, threads: int, resolve: Callable[[str], Model]
) -> Model:
    """Pin and load a model named inside the query: a URI, or the value of a model-table subquery."""
    if ref.kind == "uri":
        return resolve(ref.value)
    value = model_value(engine.first_rows(ref.value, 2), ref.table, ref.written)
    if isinstance(value, str):
        return resolve(value)
    staged = stage_bytes(value, Path(settings.resolved_cache_dir()) / "staged")
    pinned = registry.resolve(str(staged))
    pinned = replace(pinned, uri=ref.written, name=ref.table, pinned_uri=f"sha256:{pinned.sha256}")
    try:
        return load_model(pinned, threads, settings.null)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model table '{ref.table}' {ref.written}: {exc}") from None


def compile_script(
    steps: list[scripts.Step],
    catalog: sqlc.Catalog,
    engine: Any,
    resolve_reference: Callable[[Reference], tuple[str, Model]],
    read: str,
    write: str,
    check: Callable[[str], None] | None = None,
) -> str:
    """Compile and run the script's statements in order; return the SQL of the last one.

    Per statement: collect its model references, let ``resolve_reference`` pin and register
    the new ones, rewrite, then run it (a view or temp table later statements read). The
    last statement's SQL is returned to be published, its repeated column names renamed.
    ``check`` (the sandbox) sees every compiled statement before an engine does.
    """
    for step in steps:
        tree = step.tree
        for ref in sqlc.prepare(tree, catalog, step.variables, write, read):
            if ref.kind != "bound" and ref.key not in catalog.functions:
                catalog.functions[ref.key] = resolve_reference(ref)
        tree = sqlc.rewrite(tree, catalog, read, write)
        sql = sqlc.generate(tree, write)
        if check is not None:
            check(sql)
        if step.kind == "query":
            renamed = deduplicated(engine.columns(sql))
            return sqlc.generate(sqlc.column_aliases(tree, renamed), write) if renamed is not None else sql
        target = catalog.names.create(step.target, temporary=step.kind == "table")
        engine.run_statement(scripts.creation_sql(step.kind, target, tree, write))
    raise AssertionError("a planned script ends with a query")  # scripts.plan guarantees it


def run_metadata(spec: JobSpec, refs: dict[str, ModelRef], engine: str, dialect: str, sql: str) -> dict[str, Any]:
    """The run metadata stored with a result: pinned models, inputs, query, versions (redacted)."""
    return redact_data(
        {
            "scoring_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "engine": engine,
            "dialect": dialect,
            "models": {name: ref.describe() for name, ref in refs.items()},
            "tables": {name: storage.redact(uri) for name, uri in spec.tables.items()},
            "query": spec.query,
            "compiled_sql": sql,
        }
    )
