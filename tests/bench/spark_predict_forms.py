"""Spark: a table-valued PREDICT as an Arrow UDTF with a TABLE argument, against the rewrite.

The Spark engine rewrites ``PREDICT(MODEL = 'm', DATA = t AS d) WITH (...)`` into a projection
that calls the model's scalar Arrow UDF (``SELECT d.*, m(f0, ..., f19) AS p FROM t AS d``).
Spark 4.1+ could run it as a table function instead: an ``arrow_udtf`` whose ``eval`` receives
each Arrow batch of ``TABLE(t)`` and yields the batch with the model's outputs appended. This
scores the same rows both ways into Spark's no-op sink (every row computed, nothing written),
after one warm-up run of each, best of three alternating runs, on one local[2] session. Run
after ``make bench`` has built its data and models:

    .venv/bin/python tests/bench/spark_predict_forms.py [ROWS]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
import prepare

from scoring import api
from scoring.cache import load_model


def main() -> None:
    bench = prepare.spark_experiment("predict-forms", sys.argv, 1_000_000)
    rows, source, settings, ref, spark = bench.rows, bench.source, bench.settings, bench.ref, bench.spark
    from pyspark.sql.functions import arrow_udtf

    from scoring import types

    api.register(spark, {"m": "models:/bench_gb/1"}, settings=settings)
    spark.read.parquet(str(source)).createOrReplaceTempView("t")
    model = load_model(ref, 1)
    data_ddl = spark.table("t").schema.simpleString()[len("struct<") : -1]
    output_ddl = ", ".join(f"{f.name} {types.spark_type(f.type)}" for f in model.output_type)
    features = list(prepare.FEATURES)

    @arrow_udtf(returnType=f"{data_ddl}, {output_ddl}")
    class Predict:
        def eval(self, batch: pa.RecordBatch) -> Iterator[pa.Table]:
            scored = load_model(ref, 1).predict([batch.column(f) for f in features])
            yield (
                pa.Table.from_batches([batch])
                .append_column(pa.field("label", scored.type.field("label").type), [scored.field("label")])
                .append_column(
                    pa.field("probability", scored.type.field("probability").type), [scored.field("probability")]
                )
            )

    spark.udtf.register("predict_m", Predict)
    queries = {
        "rewrite (scalar arrow_udf)": f"SELECT {', '.join(spark.table('t').columns)}, p.label, p.probability "
        f"FROM (SELECT *, m({', '.join(features)}) AS p FROM t)",
        "arrow_udtf(TABLE(t))": "SELECT * FROM predict_m(TABLE(t))",
    }

    def run(sql: str) -> float:
        started = time.perf_counter()
        spark.sql(sql).write.format("noop").mode("overwrite").save()
        return time.perf_counter() - started

    for sql in queries.values():  # warm-up: JIT, Python workers, model sessions
        run(sql)
    times: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(3):  # alternate the forms so drift on a shared machine hits both
        for name, sql in queries.items():
            times[name].append(run(sql))
    for name, runs in times.items():
        best = min(runs)
        print(f"{name:>28}: {rows:,} rows in {best:.2f} s ({rows / best:,.0f} rows/s); runs {runs}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
