"""Each row reaches the model exactly once, whatever the query shape (struct expansion, filters)."""

from __future__ import annotations

import pytest

from scoring import cache
from tests.engines import score

QUERIES = {
    "struct expansion": "SELECT d.id, p.* FROM PREDICT(MODEL = 'gb', DATA = t AS d) AS p",
    "filter on a prediction": "SELECT d.id FROM PREDICT(MODEL = 'gb', DATA = t AS d) "
    "WITH (label BIGINT, probability SQL_VARIANT) AS p WHERE p.label = 1",
    "bigquery": "SELECT id, predicted_label FROM ML.PREDICT(MODEL gb, TABLE t) WHERE predicted_label = 0",
    "function fields": "SELECT s.label, s.probability FROM (SELECT gb(f0, f1, f2, f3, f4, f5) AS s FROM t) "
    "WHERE s.label = 1",
}


@pytest.fixture(params=["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def engine(request):
    if request.param == "spark":
        request.getfixturevalue("spark_ready")
    return request.param


@pytest.mark.parametrize("name", list(QUERIES))
def test_each_row_is_scored_once(registry, settings, tmp_path, name, engine):
    """DuckDB counts in the model's own counter; Spark in an accumulator fed by every UDF call."""
    cache.clear()  # fresh counters for this model
    dialect = "bigquery" if name == "bigquery" else "tsql"
    _, result = score(
        settings,
        engine,
        QUERIES[name],
        {"gb": "models:/gb/1"},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
        dialect=dialect,
    )
    assert result.rows_scored["gb"] == len(registry.cases["gb"].frame)
