"""How a bound table is scanned: DuckDB's read_parquet, a pyarrow dataset (pyarrow's scanner, or one row
group at a time as the engine binds it: scoring.engines.table_scan), a loaded table.

Prints median seconds of each query per binding, and whether it still scans with
enable_external_access = false. Run: .venv/bin/python tests/bench/pushdown.py [ROWS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from scoring.engines.table_scan import streamed

QUERIES = {
    "projection: sum(c0)": "SELECT sum(c0) FROM t",
    "filter: sum(c0) WHERE id < 1%": "SELECT sum(c0) FROM t WHERE id < {cut}",
    "all columns: sum(c0..c19)": "SELECT " + " + ".join(f"sum(c{i})" for i in range(20)) + " FROM t",
}


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    rng = np.random.default_rng(0)
    table = pa.table({"id": np.arange(rows), **{f"c{i}": rng.random(rows) for i in range(20)}})
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "t.parquet")
        pq.write_table(table, path, row_group_size=rows // 20, compression="zstd")
        bindings = {
            "read_parquet view": lambda con: con.read_parquet(path).create_view("t"),
            "pyarrow dataset scanner": lambda con: con.register("t", ds.dataset(path, format="parquet")),
            "row group at a time (chosen)": lambda con: con.register("t", streamed(ds.dataset(path, format="parquet"))),
            "pyarrow table (loaded)": lambda con: con.register("t", ds.dataset(path).to_table()),
        }
        print(f"{rows:,} rows x 21 columns, {Path(path).stat().st_size / 1e6:.0f} MB, 20 row groups; median of 5 s")
        for label, bind in bindings.items():
            con = duckdb.connect()
            start = time.perf_counter()
            bind(con)
            bound = time.perf_counter() - start
            figures = []
            for sql in QUERIES.values():
                sql = sql.format(cut=rows // 100)
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    con.sql(sql).fetchall()
                    times.append(time.perf_counter() - start)
                figures.append(statistics.median(times))
            con.execute("SET enable_external_access = false")
            try:
                con.sql("SELECT count(*) FROM t").fetchall()
                sandboxed = "scans"
            except duckdb.Error as exc:
                sandboxed = f"fails ({type(exc).__name__})"
            cells = "  ".join(f"{name} {f:.3f}" for name, f in zip(QUERIES, figures, strict=True))
            print(f"{label:28} bind {bound:.3f}  {cells}  | external access off: {sandboxed}")
            con.close()


if __name__ == "__main__":
    main()
