"""Spark: Arrow UDF against pandas UDF for the same model and rows (why the engine uses Arrow).

Run after ``make bench`` has built its data and models:

    .venv/bin/python tests/bench/spark_udf_kinds.py [ROWS]

Both UDFs call the same cached :class:`scoring.model.Model`; the pandas one converts each batch
Series -> Arrow on the way in and Arrow -> pandas on the way out, as a pandas UDF must. Each
variant scores the rows into Spark's no-op sink (``write.format("noop")``: every row is computed,
nothing is written), best of two, on one local[2] session.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
import prepare

from scoring.cache import load_model


def main() -> None:
    bench = prepare.spark_experiment("udf-kinds", sys.argv, 2_000_000)
    rows, source, ref, spark = bench.rows, bench.source, bench.ref, bench.spark
    from pyspark.sql.functions import ArrowUDFType, arrow_udf, col, pandas_udf

    from scoring import types

    model = load_model(ref, 1)
    ddl = types.spark_type(model.output_type)

    def arrow_fn(*cols: pa.Array) -> pa.Array:
        return load_model(ref, 1).predict(cols)

    def pandas_fn(*cols: pd.Series) -> pd.DataFrame:
        out = load_model(ref, 1).predict([pa.Array.from_pandas(c) for c in cols])  # a STRUCT for gb
        return pa.Table.from_arrays(out.flatten(), names=[f.name for f in out.type]).to_pandas()

    udfs = {
        "arrow_udf": arrow_udf(arrow_fn, ddl, ArrowUDFType.SCALAR),
        "pandas_udf": pandas_udf(pandas_fn, ddl),
    }
    df = spark.read.parquet(str(source))
    args = [col(f) for f in prepare.FEATURES]
    for name, udf in udfs.items():
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            df.select(udf(*args).alias("p")).write.format("noop").mode("overwrite").save()
            best = min(best, time.perf_counter() - started)
        print(f"{name:>10}: {rows:,} rows in {best:.2f} s ({rows / best:,.0f} rows/s)")
    spark.stop()


if __name__ == "__main__":
    main()
