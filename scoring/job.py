"""Orchestration of one scoring job: pin models, register them, compile, run, publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scoring import __version__, publish, storage
from scoring.cache import default_threads, load_model
from scoring.engines import check_sql_name, check_table_path
from scoring.errors import ExitCode, JobInterrupted, ScoringError
from scoring.model import Model
from scoring.registry import ModelRef, Registry
from scoring.settings import Settings
from scoring.sql.compile import compile_query
from scoring.sql.dialects import read_dialect

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
    rows_scored: dict[str, int] = field(default_factory=dict)
    sql: str = ""

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
        )
    from scoring.engines.duckdb import DuckDBEngine

    return DuckDBEngine(threads=settings.threads, resolve=resolve)


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
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
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
    )
    _write_manifest(spec, manifest, started)
    return result


def _write_manifest(spec: JobSpec, manifest: dict[str, Any], started: float) -> None:
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    manifest["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    failed = manifest["status"] == "failed"
    path = manifest_path(spec.output, failed=failed)
    if storage.is_hadoop(path):  # only the Spark session reaches it: the folder's _scoring.json records the run
        log.info("run manifest not written beside %s (a Hadoop URI)", storage.redact(spec.output))
        return
    try:
        publish.write_json(path, manifest)
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
    for name in spec.models:
        check_sql_name(name, "model")
    for name, path in spec.tables.items():
        check_table_path(name, path, hadoop=spark)
    read_dialect(spec.dialect or settings.dialect or settings.engine)  # a typo fails before any registry call

    registry = registry_for(settings)
    engine_threads = settings.threads or default_threads()
    ort_threads = settings.ort_threads or default_threads(engine_threads)
    refs: dict[str, ModelRef] = {}

    def resolve(uri: str) -> Model:
        ref = registry.resolve(uri)
        refs[uri] = ref
        return load_model(ref, ort_threads, settings.null)

    models = {name: resolve(uri) for name, uri in spec.models.items()}
    refs = {name: models[name].ref for name in spec.models}
    for name, ref in refs.items():
        log.info("model %s = %s -> %s (sha256 %s)", name, ref.uri, ref.pinned_uri, ref.sha256[:12])

    engine = open_engine(settings, resolve)
    try:
        for name, path in spec.tables.items():
            engine.register_table(name, path)
        for name, model in models.items():
            engine.register_model(name, model)
        dialect = spec.dialect or settings.dialect or engine.dialect
        sql = compile_query(spec.query, dialect, engine.dialect, engine)
        log.debug("compiled SQL: %s", sql)
        metadata = run_metadata(spec, refs, engine.name, dialect, sql)
        rows = engine.publish(sql, output, metadata, settings, on_batch)
        # Bound names as given; a URI named inside the query under that URI (as in `refs`).
        names = {**{name: name for name in models}, **engine.uri_functions}
        scored = {names[fn]: count for fn, count in engine.rows_scored().items() if fn in names}
    finally:
        engine.close()
    seconds = time.perf_counter() - started
    return JobResult(output, rows, seconds, refs, scored, sql)


def run_metadata(spec: JobSpec, refs: dict[str, ModelRef], engine: str, dialect: str, sql: str) -> dict[str, Any]:
    """The run metadata stored with a result: pinned models, inputs, query, versions."""
    return {
        "scoring_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": engine,
        "dialect": dialect,
        "models": {name: ref.describe() for name, ref in refs.items()},
        "tables": {name: storage.redact(uri) for name, uri in spec.tables.items()},
        "query": spec.query,
        "compiled_sql": sql,
    }
