"""Run a scoring query on an engine and read the result back, the way the CLI does."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scoring.job import JobResult, JobSpec, run_job
from scoring.settings import Settings


def score(
    settings: Settings,
    engine: str,
    query: str,
    models: dict[str, str],
    tables: dict[str, Path],
    out: Path,
    dialect: str | None = None,
    **overrides: object,
) -> tuple[pa.Table, JobResult]:
    """Run one job and return the published table sorted as written, plus the job result."""
    job_settings = settings.model_copy(update={"engine": engine, **overrides})
    spec = JobSpec(
        models=models, tables={k: str(v) for k, v in tables.items()}, query=query, output=out, dialect=dialect
    )
    result = run_job(spec, job_settings)
    return pq.read_table(out), result
