"""Baseline (b): a plain DuckDB Parquet -> Parquet copy, run as its own process by bench.py.

    python copy_job.py SOURCE.parquet TARGET.parquet [COPY OPTIONS] [COMPUTED COLUMN]

With COMPUTED COLUMN (``"f0 + f1 AS score"``) the copy writes every column plus that one, as a
job writes every column plus its score.

Prints one JSON line: ``import_s`` (importing duckdb) and ``copy_s`` (the COPY statement alone).
"""

from __future__ import annotations

import json
import sys
import time

started = time.perf_counter()


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    options = sys.argv[3] if len(sys.argv) > 3 else "FORMAT parquet"
    computed = f", {sys.argv[4]}" if len(sys.argv) > 4 else ""
    import duckdb

    imported = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"COPY (SELECT *{computed} FROM read_parquet('{source}')) TO '{target}' ({options})")
    copied = time.perf_counter()
    con.close()
    print(json.dumps({"import_s": imported - started, "copy_s": copied - imported}))


if __name__ == "__main__":
    main()
