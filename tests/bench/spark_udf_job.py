"""Baseline (f): score Parquet with ``mlflow.pyfunc.spark_udf`` in a local Spark, write Parquet.

Run as a whole process by bench.py (so the JVM start counts, as it does for ``scoring run
--engine spark``): starts its own SparkSession, reads the table, applies the udf to the 20
feature columns and writes the result. Prints one JSON line with the phases' seconds.

    python spark_udf_job.py MODEL_URI SOURCE.parquet OUTPUT_FOLDER [--master local[2]] [--result-type "label long"]

MLflow's ONNX pyfunc turns the outputs into one pandas DataFrame and so needs every output to
have one value per row: it cannot serve ``label [N]`` + ``probability [N, 2]``, so bench.py
points this at a label-only copy of the gradient-boosting graph (see prepare.py). MODEL_URI ``-``
reads and writes the same rows plus one computed column, no model: the floor of any Spark path
on this machine (the Spark limit's I/O term).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_uri")
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--result-type", default="label long")
    args = parser.parse_args()
    # Python workers must be this interpreter (the venv), not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    import mlflow.pyfunc
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    imported = time.perf_counter()
    spark = (
        SparkSession.builder.master(args.master)
        .appName("bench-spark-udf")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    session = time.perf_counter()
    frame = spark.read.parquet(args.source)
    if args.model_uri == "-":  # the Spark floor: the same read and write plus one computed column, no model
        loaded, scored = time.perf_counter(), frame.withColumn("score", F.col("f0") + F.col("f1"))
    else:
        udf = mlflow.pyfunc.spark_udf(spark, args.model_uri, result_type=args.result_type, env_manager="local")
        loaded = time.perf_counter()
        features = [c for c in frame.columns if c.startswith("f")]
        # The signature's columns are float (float32); Parquet holds doubles, which MLflow's schema
        # enforcement refuses to narrow: cast, as a user of spark_udf would.
        scored = frame.withColumn("p", udf(*[F.col(c).cast("float").alias(c) for c in features]))
    scored.write.mode("overwrite").parquet(args.output)
    written = time.perf_counter()
    spark.stop()
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "session_s": session - imported,
                "udf_s": loaded - session,
                "score_write_s": written - loaded,
            }
        )
    )


if __name__ == "__main__":
    main()
