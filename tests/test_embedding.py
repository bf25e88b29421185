"""Embedding: scoring.register on a user's DuckDB connection and SparkSession, scoring.enrich."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import scoring
from scoring.writer import read_metadata


def test_register_on_a_duckdb_connection(registry, settings):
    case = registry.cases["churn"]
    con = duckdb.connect()
    refs = scoring.register(con, {"churn": "models:/churn/1"}, settings=settings)
    assert refs["churn"].version == "1"
    con.execute(f"CREATE TABLE customers AS SELECT * FROM read_parquet('{registry.tables['churn']}')")
    rows = con.execute(
        "SELECT customer_id, churn(plan, region, tenure, monthly_spend).label FROM customers ORDER BY customer_id"
    ).fetchall()
    np.testing.assert_array_equal([r[1] for r in rows], case.expected_label())


def test_register_rejects_other_targets(settings):
    with pytest.raises(TypeError, match="DuckDB connection or a SparkSession, not dict"):
        scoring.register({}, {"m": "models:/gb/1"}, settings=settings)


@pytest.mark.spark
def test_register_on_a_spark_session(registry, settings, spark_ready):
    case = registry.cases["churn"]
    scoring.register(spark_ready, {"churn": "models:/churn/1"}, settings=settings)
    spark_ready.read.parquet(str(registry.tables["churn"])).createOrReplaceTempView("customers")
    rows = spark_ready.sql(
        "SELECT customer_id, churn(plan, region, tenure, monthly_spend) AS s FROM customers ORDER BY customer_id"
    ).collect()
    np.testing.assert_array_equal([r.s.label for r in rows], case.expected_label())
    np.testing.assert_allclose([list(r.s.probabilities) for r in rows], case.expected_proba(), rtol=1e-5, atol=1e-5)


def test_enrich_writes_parquet_like_the_cli(registry, tmp_path):
    out = tmp_path / "enriched.parquet"
    result = scoring.enrich(
        "SELECT * FROM ML.PREDICT(MODEL gb, (SELECT id, f0, f1, f2, f3, f4, f5 FROM t))",
        models={"gb": "models:/gb@champion"},
        tables={"t": registry.tables["gb"]},
        output=out,
        dialect="bigquery",
        tracking_uri=registry.tracking_uri,
        cache_dir=tmp_path / "cache",
    )
    assert result.rows == pq.read_table(out).num_rows == len(registry.cases["gb"].frame)
    assert read_metadata(out)["models"]["gb"]["pinned_uri"] == "models:/gb/1"
    # A second job in the same process (the model session is reused) counts its own rows only.
    again = scoring.enrich(
        "SELECT id, gb(f0, f1, f2, f3, f4, f5) AS p FROM t WHERE id < 10",
        models={"gb": "models:/gb/1"},
        tables={"t": registry.tables["gb"]},
        output=tmp_path / "again.parquet",
        tracking_uri=registry.tracking_uri,
        cache_dir=tmp_path / "cache",
    )
    assert result.rows_scored == {"gb": len(registry.cases["gb"].frame)} and again.rows_scored == {"gb": 10}
