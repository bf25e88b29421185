"""scoring: registered ONNX models as SQL functions in DuckDB and Spark.

Embedding: :func:`register` puts models on your DuckDB connection or SparkSession;
:func:`enrich` runs a PREDICT query and publishes Parquet like ``scoring run``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "enrich", "register"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import scoring` stays cheap (the CLI imports engines on demand).
    if name in ("register", "enrich"):
        from scoring import api

        return getattr(api, name)
    raise AttributeError(f"module 'scoring' has no attribute {name!r}")
