"""Run by test_storage_spark.py: publish on local-cluster[2,1,1024] to file:// URIs and plain paths.

Prints one JSON line: per run, the output, the rows and the folder's listing afterwards.
"""

from __future__ import annotations

import json
import os
import sys

from scoring.engines.spark import start_session
from scoring.job import JobSpec, run_job
from scoring.settings import Settings

QUERY = "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p"


def main() -> None:
    table, tracking, cache_dir, out_dir = sys.argv[1:5]
    spark = start_session("local-cluster[2,1,1024]", "scoring-storage-test")
    settings = Settings(engine="spark", tracking_uri=tracking, cache_dir=cache_dir, dialect="tsql")
    report = []
    targets = [
        ("file://" + table, "file://" + os.path.join(out_dir, "uri")),  # new folder
        ("file://" + table, "file://" + os.path.join(out_dir, "uri")),  # replaced by a swap
        (table, os.path.join(out_dir, "plain")),
    ]
    for source, output in targets:
        spec = JobSpec(models={"gb": "models:/gb/1"}, tables={"t": source}, query=QUERY, output=output)
        result = run_job(spec, settings)
        report.append({"output": result.output, "rows": result.rows})
    report.append({"listing": sorted(os.listdir(out_dir))})
    print(json.dumps(report))
    spark.stop()


if __name__ == "__main__":
    main()
