"""Embedding entry points: register models on your own connection, or run a job from Python."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scoring.cache import default_threads, load_model
from scoring.job import JobResult, JobSpec, registry_for, run_job
from scoring.registry import ModelRef
from scoring.settings import Settings, load_settings


def _engine_kind(target: Any) -> str:
    kind = type(target).__module__.split(".")[0].lstrip("_")  # duckdb 2 types live in `_duckdb`
    if kind not in ("duckdb", "pyspark"):
        raise TypeError(f"register() takes a DuckDB connection or a SparkSession, not {type(target).__name__}")
    return kind


def pin(models: Mapping[str, str], settings: Settings | None = None) -> dict[str, ModelRef]:
    """Resolve each model URI to a pinned, locally cached file (aliases resolved once, here)."""
    registry = registry_for(settings or load_settings())
    return {name: registry.resolve(uri) for name, uri in models.items()}


def attach(target: Any, pinned: Mapping[str, ModelRef], settings: Settings | None = None) -> None:
    """Register already pinned models as SQL functions on a DuckDB connection or SparkSession."""
    settings = settings or load_settings()
    if _engine_kind(target) == "duckdb":
        from scoring.engines.duckdb import DuckDBEngine

        engine: Any = DuckDBEngine(con=target)
        threads = settings.ort_threads or default_threads(_duckdb_threads(target))
    else:
        from scoring.engines.spark import SparkEngine

        engine = SparkEngine(spark=target, null=settings.null, udf=settings.spark_udf)
        threads = 1
    for name, ref in pinned.items():
        engine.register_model(name, load_model(ref, threads, settings.null))


def register(target: Any, models: Mapping[str, str], *, settings: Settings | None = None) -> dict[str, ModelRef]:
    """Register models as SQL functions on a DuckDB connection or a SparkSession.

    Args:
        target: A ``duckdb.DuckDBPyConnection`` or a ``pyspark.sql.SparkSession``.
        models: SQL function name -> model URI (``models:/churn@champion``, a ``.onnx`` path, ...).
        settings: Registry and cache settings; default: from the environment.

    Returns:
        The pinned reference of each model, by function name.

    Example:
        >>> scoring.register(spark, {"churn": "models:/churn@champion"})
        >>> spark.sql("SELECT customer_id, churn(plan, region, tenure, monthly_spend) AS s FROM customers")
    """
    settings = settings or load_settings()
    _engine_kind(target)  # refuse a wrong target before touching the registry
    pinned = pin(models, settings)
    attach(target, pinned, settings)
    return pinned


def _duckdb_threads(con: Any) -> int:
    row = con.sql("SELECT current_setting('threads')").fetchall()[0]
    return int(row[0]) if row else 1


def enrich(
    query: str,
    *,
    models: Mapping[str, str],
    tables: Mapping[str, str | Path],
    output: str | Path,
    dialect: str | None = None,
    engine: str = "duckdb",
    **settings: Any,
) -> JobResult:
    """Run a PREDICT query and publish Parquet, with the same semantics as ``scoring run``.

    Extra keyword arguments are settings (``mode="error"``, ``null="nan"``, ``tracking_uri=...``).
    """
    job_settings = load_settings(engine=engine, **settings)
    spec = JobSpec(
        models=dict(models),
        tables={k: str(v) for k, v in tables.items()},
        query=query,
        output=str(output),
        dialect=dialect,
    )
    return run_job(spec, job_settings)
