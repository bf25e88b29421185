"""scoring: registered ONNX models as SQL functions in DuckDB and Spark.

Embedding entry points live in :mod:`scoring.api` and are re-exported here.
"""

__version__ = "0.1.0"
