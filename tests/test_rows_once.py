"""Each row reaches the model exactly once, whatever the query shape (struct expansion, filters)."""

from __future__ import annotations

import pytest

from scoring import cache
from tests.engines import score

QUERIES = {
    "struct expansion": "SELECT d.id, p.* FROM PREDICT(MODEL = 'gb', DATA = t AS d) AS p",
    "filter on a prediction": "SELECT d.id FROM PREDICT(MODEL = 'gb', DATA = t AS d) "
    "WITH (label BIGINT, probability SQL_VARIANT) AS p WHERE p.label = 1",
    "bigquery": "SELECT id, label FROM ML.PREDICT(MODEL gb, (SELECT id, f0, f1, f2, f3, f4, f5 FROM t)) "
    "WHERE label = 0",
    "fabric scalar": "SELECT s.label FROM (SELECT PREDICT('gb', f0, f1, f2, f3, f4, f5) AS s FROM t) WHERE s.label = 1",
    "function fields": "SELECT s.label, s.probability FROM (SELECT gb(f0, f1, f2, f3, f4, f5) AS s FROM t) "
    "WHERE s.label = 1",
}


# Nested forms: every occurrence scores every row once, so gb named twice scores 2 x rows.
NESTED = {
    "tsql inside tsql DATA": "SELECT o.id, o.first, q.label FROM PREDICT(MODEL = 'gb', DATA = "
    "(SELECT d.id, d.f0, d.f1, d.f2, d.f3, d.f4, d.f5, p.label AS first FROM PREDICT(MODEL = 'gb', DATA = t AS d) "
    "WITH (label BIGINT) AS p) AS o) WITH (label BIGINT) AS q WHERE q.label = 1",
    "ml.predict inside ml.predict": "SELECT id, first, label FROM ML.PREDICT(MODEL gb, (SELECT id, f0, f1, f2, f3, "
    "f4, f5, label AS first FROM ML.PREDICT(MODEL gb, (SELECT id, f0, f1, f2, f3, f4, f5 FROM t)))) WHERE label = 0",
    "tsql in a CTE, read by a join": "WITH scored AS (SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) "
    "WITH (label BIGINT) AS p) SELECT s.id, s.label, q.label AS again FROM scored AS s JOIN PREDICT(MODEL = 'gb', "
    "DATA = t AS d) WITH (label BIGINT) AS q ON s.id = d.id",
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
    dialect = {"bigquery": "bigquery", "fabric scalar": "spark"}.get(name, "tsql")
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


@pytest.mark.parametrize("name", list(NESTED))
def test_nested_forms_score_each_occurrence_once(registry, settings, tmp_path, name, engine):
    cache.clear()
    _, result = score(
        settings,
        engine,
        NESTED[name],
        {"gb": "models:/gb/1"},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
        dialect="bigquery" if name.startswith("ml.") else "tsql",
    )
    assert result.rows_scored["gb"] == 2 * len(registry.cases["gb"].frame)
