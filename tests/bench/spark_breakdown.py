"""Spark: where a scoring job's time goes beyond its limit, one added part at a time (issue 12).

Run after ``make bench`` has built its data and models (pyspark 4.1+, for ``arrow_udf``):

    .venv/bin/python tests/bench/spark_breakdown.py [ROWS]

On one local[2] session (the JVM already started, so its start is not in any figure), each step
adds one part to the previous one and is timed best of two:

1. scan: read the table's 20 feature columns into Spark's no-op sink;
2. + Python round trip: an Arrow UDF over the 20 columns that returns a constant column, so the
   figure adds the Python workers and Arrow serialization both ways, but no model;
3. + model: the same UDF scoring gb through the cached :class:`scoring.model.Model`
   (its load included once per Python worker);
4. + write: ``SELECT *, score`` written as Parquet, as the job writes.

The differences between consecutive steps are the parts' costs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
import prepare

from scoring.cache import load_model


def main() -> None:
    bench = prepare.spark_experiment("breakdown", sys.argv, 4_000_000)
    rows, source, ref, spark = bench.rows, bench.source, bench.ref, bench.spark
    from pyspark.sql.functions import ArrowUDFType, arrow_udf, col

    from scoring import types

    ddl = types.spark_type(load_model(ref, 1).output_type)

    def constant(*cols: pa.Array) -> pa.Array:
        return pa.nulls(len(cols[0]), pa.float64()).fill_null(0.0)

    def score(*cols: pa.Array) -> pa.Array:
        return load_model(ref, 1).predict(cols)

    noop_udf = arrow_udf(constant, "double", ArrowUDFType.SCALAR)
    model_udf = arrow_udf(score, ddl, ArrowUDFType.SCALAR)
    df = spark.read.parquet(str(source))
    args = [col(f) for f in prepare.FEATURES]
    out = Path(tempfile.mkdtemp(prefix="spark-breakdown-"))

    def noop(column: Any) -> None:  # a pyspark Column
        df.select(column).write.format("noop").mode("overwrite").save()

    steps = {
        "scan": lambda: df.select(*args).write.format("noop").mode("overwrite").save(),
        "+ Python round trip": lambda: noop(noop_udf(*args).alias("p")),
        "+ model": lambda: noop(model_udf(*args).alias("p")),
        "+ write": lambda: df.select("*", model_udf(*args).alias("p")).write.mode("overwrite").parquet(str(out / "o")),
    }
    previous = 0.0
    try:
        for name, step in steps.items():
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                step()
                best = min(best, time.perf_counter() - started)
            print(f"{name:>20}: {best:6.2f} s  (this part {best - previous:+6.2f} s)  {rows:,} rows")
            previous = best
    finally:
        shutil.rmtree(out, ignore_errors=True)
        spark.stop()


if __name__ == "__main__":
    main()
