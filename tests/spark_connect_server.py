"""A local Spark Connect server for the Connect tests: ``python spark_connect_server.py PORT``.

pyspark 4.x bundles the server (its ``SparkConnectPlugin``); this script starts a local[2]
SparkContext with that plugin listening on ``PORT``, prints ``ready`` and serves until its stdin
closes. (``SparkSession.builder.remote("local[2]")`` would start one too, but always on the
default port 15002, which parallel test runs would share.) Clients then reach
it as a real remote: ``sc://localhost:PORT`` (with the token in SPARK_CONNECT_AUTHENTICATE_TOKEN).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    port = sys.argv[1]
    # Its executors' Python workers must run this interpreter (it has scoring and onnxruntime).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
        .config("spark.connect.grpc.binding.port", port)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    print("ready", flush=True)  # the plugin listens once the context is up
    sys.stdin.read()  # serve until the test closes our stdin (or dies)
    spark.stop()


if __name__ == "__main__":
    main()
