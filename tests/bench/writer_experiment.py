"""Issue 12 lever: the job's Parquet writer (pyarrow, one encoding thread) vs DuckDB's own COPY.

    python tests/bench/writer_experiment.py [--rows 2000000] [--repeat 3]

Both write the same in-memory Arrow stream (the cached bench table plus one float column,
as a job adds its score: 21 float64 columns, 131,072-row batches) to one zstd Parquet file
with 131,072-row row groups, in this process:

- ``pyarrow``: ``ParquetWriter.write_batch`` per batch, as ``scoring.publish.write_parquet``
  writes (no dictionary for float columns);
- ``duckdb COPY``: the stream registered on a fresh DuckDB connection and ``COPY (SELECT *
  FROM stream) TO file`` (insertion order kept, DuckDB's default threads).

Prints wall and CPU seconds (this process, all threads) of the fastest of ``--repeat`` runs,
and the load average, as one JSON line per writer.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import prepare
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 131_072


def _stream(table: pa.Table) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=ROW_GROUP))


def write_pyarrow(table: pa.Table, path: Path) -> None:
    reader = _stream(table)
    with pq.ParquetWriter(path, reader.schema, compression="zstd", use_dictionary=[]) as writer:
        for batch in reader:
            writer.write_batch(batch, row_group_size=batch.num_rows)


def write_duckdb(table: pa.Table, path: Path) -> None:
    con = duckdb.connect()
    stream = _stream(table)
    con.register("stream", stream)
    options = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP}"
    con.execute(f"COPY (SELECT * FROM stream) TO '{path}' ({options})")
    con.close()


def timed(work: Any, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", default=str(Path(__file__).resolve().parents[2] / ".scoring" / "bench"))
    args = parser.parse_args()
    table = pq.read_table(prepare.data_table(Path(args.work), args.rows))
    table = table.append_column("score", pa.array(np.random.default_rng(0).random(table.num_rows)))
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in (("pyarrow", write_pyarrow), ("duckdb COPY", write_duckdb)):
            target = Path(tmp) / "out.parquet"
            wall, cpu = timed(lambda write=write, target=target: write(table, target), args.repeat)
            written = pq.ParquetFile(target).metadata
            assert written.num_rows == table.num_rows and written.num_columns == table.num_columns
            print(
                json.dumps(
                    {
                        "writer": name,
                        "rows": table.num_rows,
                        "wall_s": round(wall, 3),
                        "cpu_s": round(cpu, 3),
                        "mb": round(target.stat().st_size / 1e6, 1),
                        "load": os.getloadavg()[0],
                    }
                )
            )


if __name__ == "__main__":
    main()
