"""Orchestration of one scoring job: pin models, register them, compile, run, publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scoring import __version__
from scoring.cache import default_threads, load_model
from scoring.engines import check_sql_name, check_table_path
from scoring.errors import ExitCode, JobInterrupted, ScoringError
from scoring.model import Model
from scoring.registry import ModelRef, Registry
from scoring.settings import Settings
from scoring.sql.compile import compile_query
from scoring.sql.dialects import read_dialect
from scoring.writer import check_target, write_json_atomically

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """What to score: models and tables bound to SQL names, a query and an output path."""

    models: dict[str, str]
    tables: dict[str, str]
    query: str
    output: Path
    dialect: str | None = None


@dataclass
class JobResult:
    """What a finished job did."""

    output: Path
    rows: int
    seconds: float
    models: dict[str, ModelRef]
    rows_scored: dict[str, int] = field(default_factory=dict)
    sql: str = ""
    scoring_path: str | None = None  # DuckDB: "batch" or "udf" (scoring.engines.batch)

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


def manifest_path(output: Path, *, failed: bool = False) -> Path:
    """Where the run manifest of a job writing ``output`` goes, beside it.

    ``<name>.run.json`` describes the run that published the result at ``output``;
    ``<name>.failed.run.json`` the latest run that failed (so a failure never hides the
    record of the result still in place). A successful run removes the latter.
    """
    output = Path(output)
    return output.parent / f"{output.name}.{'failed.' if failed else ''}run.json"


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
        "models_requested": dict(spec.models),
        "tables": dict(spec.tables),
        "output": str(spec.output),
    }
    try:
        result = _run(spec, settings, on_batch, started)
    except Exception as exc:
        # A stop signal that surfaced through the engine as some other error (a broken gateway
        # call, a query error) is still a stop.
        failure = JobInterrupted.pending() or (exc if isinstance(exc, ScoringError) else None)
        if failure is None:  # a bug: still on record for the scheduler, then raised as it is
            first = (str(exc).strip().splitlines() or [""])[0]
            manifest.update(status="failed", exit_code=int(ExitCode.INTERNAL), error=f"{type(exc).__name__}: {first}")
            _write_manifest(spec, manifest, started)
            raise
        manifest.update(status="failed", exit_code=failure.exit_code, error=str(failure))
        _write_manifest(spec, manifest, started)
        if failure is exc:
            raise
        raise failure from None
    manifest.update(
        status="succeeded",
        exit_code=0,
        rows=result.rows,
        rows_scored=result.rows_scored,
        scoring_path=result.scoring_path,
        models={name: ref.describe() for name, ref in result.models.items()},
    )
    _write_manifest(spec, manifest, started)
    return result


def _write_manifest(spec: JobSpec, manifest: dict[str, Any], started: float) -> None:
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    failed = manifest["status"] == "failed"
    path = manifest_path(Path(spec.output), failed=failed)
    try:
        write_json_atomically(path, manifest)
        if not failed:
            manifest_path(Path(spec.output), failed=True).unlink(missing_ok=True)
    except OSError as exc:  # the manifest must never hide the job's own outcome
        log.warning("run manifest %s not written: %s", path, exc.strerror)


def _run(spec: JobSpec, settings: Settings, on_batch: Callable[[int], None] | None, started: float) -> JobResult:
    output = Path(spec.output)
    check_target(output, settings.mode, folder=settings.engine == "spark")
    for name in spec.models:
        check_sql_name(name, "model")
    for name, path in spec.tables.items():
        check_table_path(name, path)
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
    return JobResult(output, rows, seconds, refs, scored, sql, metadata.get("scoring_path"))


def run_metadata(spec: JobSpec, refs: dict[str, ModelRef], engine: str, dialect: str, sql: str) -> dict[str, Any]:
    """The run metadata stored with a result: pinned models, inputs, query, versions."""
    return {
        "scoring_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine": engine,
        "dialect": dialect,
        "models": {name: ref.describe() for name, ref in refs.items()},
        "tables": dict(spec.tables),
        "query": spec.query,
        "compiled_sql": sql,
    }
