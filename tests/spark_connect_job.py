"""Run in a subprocess by test_spark_connect.py: embed scoring in a Spark Connect client session.

``python spark_connect_job.py URL TABLE TRACKING_URI CACHE_DIR`` registers the test models on a
Connect session (twice, as a notebook cell run again would), scores them and prints one JSON
line: the session's class module, the gb labels and the churn structs in id order.
"""

from __future__ import annotations

import json
import sys

import scoring
from scoring.settings import Settings


def main() -> None:
    url, table, churn_table, tracking, cache_dir = sys.argv[1:6]
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).getOrCreate()
    settings = Settings(tracking_uri=tracking, cache_dir=cache_dir)
    for _ in range(2):  # the second time the model file is already among the session's artifacts
        scoring.register(spark, {"gb": "models:/gb/1", "churn": "models:/churn/1"}, settings=settings)
    spark.read.parquet(table).createOrReplaceTempView("t")
    spark.read.parquet(churn_table).createOrReplaceTempView("customers")
    labels = spark.sql("SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t ORDER BY id").collect()
    churn = spark.sql(
        "SELECT customer_id, churn(plan, region, tenure, monthly_spend) AS s FROM customers ORDER BY customer_id"
    ).collect()
    print(
        json.dumps(
            {
                "session": type(spark).__module__,
                "labels": [r.label for r in labels],
                "churn_labels": [r.s.label for r in churn],
                "churn_probabilities": [list(r.s.probabilities) for r in churn],
            }
        )
    )
    spark.stop()


if __name__ == "__main__":
    main()
