"""A bound table read one row group at a time returns exactly what pyarrow's own scan returns."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from scoring.engines.duckdb import DuckDBEngine
from scoring.engines.table_scan import StreamedDataset
from scoring.errors import InputDataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A hive folder: two partitions, two files each, several small row groups per file."""
    root = tmp_path_factory.mktemp("hive")
    for part in (1, 2):
        for n in range(2):
            start = (part * 2 + n) * 1000
            table = pa.table(
                {
                    "id": pa.array(range(start, start + 1000), pa.int64()),
                    "x": pa.array([float(i % 97) for i in range(1000)]),
                    "name": pa.array([f"n{i % 7}" for i in range(1000)]),
                }
            )
            (root / f"part={part}").mkdir(exist_ok=True)
            pq.write_table(table, root / f"part={part}" / f"{n}.parquet", row_group_size=128)
    return root


@pytest.fixture
def engine(folder):
    engine = DuckDBEngine()
    engine.register_table("t", str(folder))
    yield engine
    engine.close()


def _expected(folder, filter=None, columns=None):
    plain = ds.dataset(folder, format="parquet", partitioning="hive")
    return plain.to_table(filter=filter, columns=columns)


def test_the_table_is_bound_streamed(engine):
    assert isinstance(engine.tables["t"], StreamedDataset)


def test_every_row_and_column_in_order_with_partition_columns(engine, folder):
    got = engine.con.sql("SELECT id, x, name, part FROM t").to_arrow_table()
    want = _expected(folder, columns=["id", "x", "name", "part"])
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("part").to_pylist() == want.column("part").to_pylist()
    assert got.column("name").to_pylist() == want.column("name").to_pylist()


def test_filters_on_columns_and_partitions_and_projections_are_exact(engine, folder):
    got = engine.con.sql("SELECT id, name FROM t WHERE x > 90 AND part = 2 ORDER BY id").fetchall()
    want = _expected(folder, filter=(ds.field("x") > 90) & (ds.field("part") == 2), columns=["id", "name"])
    assert got == sorted(zip(want.column("id").to_pylist(), want.column("name").to_pylist(), strict=True))
    assert len(got) == 2 * 6 * 10  # 2 files, x in 91..96 ten times per 1000 rows, well below every file


def test_a_range_that_prunes_row_groups_and_a_count(engine, folder):
    # ids 4100..4299 sit in two row groups of one file: the others are skipped on their statistics.
    assert engine.con.sql("SELECT count(*), min(id), max(id) FROM t WHERE id BETWEEN 4100 AND 4299").fetchall() == [
        (200, 4100, 4299)
    ]
    assert engine.con.sql("SELECT count(*) FROM t").fetchall() == [(4000,)]


def test_the_scanner_reads_one_row_group_per_batch(engine):
    reader = engine.tables["t"].scanner(columns=["id"]).to_reader()
    first = reader.read_next_batch()
    assert first.num_rows == 128 and first.schema.names == ["id"]


def test_a_corrupt_file_after_good_ones_fails_the_query_as_it_starts(tmp_path):
    # Read lazily, the broken footer would surface midway, re-raised by pyarrow and no longer as
    # DuckDB's error class: the job would exit 1 instead of 9 (an input error).
    pq.write_table(pa.table({"x": [float(i) for i in range(5000)]}), tmp_path / "part-0.parquet", row_group_size=100)
    (tmp_path / "part-1.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"\x10\x00\x00\x00PAR1")
    engine = DuckDBEngine()
    try:
        engine.register_table("t", str(tmp_path))
        with pytest.raises(InputDataError, match=r"part-1\.parquet"):
            engine.execute("SELECT x FROM t", 100)
    finally:
        engine.close()
