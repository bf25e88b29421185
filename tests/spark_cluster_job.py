"""Run in a subprocess by test_spark_cluster.py: score on local-cluster[2,1,1024], report per worker.

Prints one JSON line: the scored labels in id order and, for every Python worker that ran a
task, its pid and how many onnxruntime sessions it built.
"""

from __future__ import annotations

import json
import os
import sys

import pyarrow as pa
from pyspark.sql.functions import ArrowUDFType, arrow_udf

import scoring
from scoring.engines.spark import start_session
from scoring.settings import Settings


def probe(ids: pa.Array) -> pa.Array:
    from scoring import cache

    return pa.array([f"{os.getpid()}:{cache.sessions_created()}"] * len(ids))


def main() -> None:
    table, tracking, cache_dir = sys.argv[1:4]
    spark = start_session("local-cluster[2,1,1024]", "scoring-cluster-test")
    settings = Settings(tracking_uri=tracking, cache_dir=cache_dir)
    scoring.register(spark, {"gb": "models:/gb@champion"}, settings=settings)
    spark.read.parquet(table).repartition(8, "id").createOrReplaceTempView("t")
    spark.udf.register("probe", arrow_udf(probe, "string", ArrowUDFType.SCALAR).asNondeterministic())
    first = spark.sql("SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t").collect()
    second = spark.sql("SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label, probe(id) AS worker FROM t").collect()
    labels = [r.label for r in sorted(second, key=lambda r: r.id)]
    assert labels == [r.label for r in sorted(first, key=lambda r: r.id)]
    workers = sorted({r.worker for r in second})
    print(
        json.dumps(
            {"labels": labels, "workers": workers, "executors": spark.sparkContext.getConf().get("spark.master")}
        )
    )
    spark.stop()


if __name__ == "__main__":
    main()
