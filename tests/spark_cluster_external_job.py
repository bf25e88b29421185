"""Run in a subprocess by test_spark_cluster.py: score a model with external data on local-cluster.

``python spark_cluster_external_job.py URI TABLE FEATURES TRACKING_URI CACHE_DIR`` registers the
model on a local-cluster[2,1,1024] session (where ``addFile`` refuses a local folder, so the
model must travel as an archive) and prints one JSON line: the predictions in table order.
"""

from __future__ import annotations

import json
import sys

import scoring
from scoring.engines.spark import start_session
from scoring.settings import Settings


def main() -> None:
    uri, table, features, tracking, cache_dir = sys.argv[1:6]
    spark = start_session("local-cluster[2,1,1024]", "scoring-cluster-external-test")
    scoring.register(spark, {"mlp": uri}, settings=Settings(tracking_uri=tracking, cache_dir=cache_dir))
    frame = spark.read.parquet(table)
    spark.createDataFrame(frame.rdd.zipWithIndex().map(lambda r: (*r[0], r[1])), [*frame.columns, "_row"]).repartition(
        4
    ).createOrReplaceTempView("r")
    rows = spark.sql(f"SELECT _row, mlp({features}) AS y FROM r").collect()
    print(json.dumps({"y": [r.y for r in sorted(rows, key=lambda r: r._row)]}))
    spark.stop()


if __name__ == "__main__":
    main()
