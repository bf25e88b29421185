"""The DuckDB batch path returns exactly what the UDF path returns, and says which one ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.job import manifest_path
from scoring.publish import read_metadata
from tests.engines import score

TOL = {"rtol": 1e-5, "atol": 1e-5}
GB_ARGS = "f0, f1, f2, f3, f4, f5"

# (id, query, dialect, model key, table key, path the auto setting takes)
CASES = [
    ("call-star", f"SELECT *, gb({GB_ARGS}) AS p FROM t", None, "gb", "gb", "batch"),
    (
        "call-fields",
        f"SELECT id, gb({GB_ARGS}).label AS l, gb({GB_ARGS}).probability FROM t",
        None,
        "gb",
        "gb",
        "batch",
    ),
    ("call-alias-star", f"SELECT d.*, gb({GB_ARGS}) AS s FROM t AS d", None, "gb", "gb", "batch"),
    (
        "subquery-fields",
        f"SELECT id, p.label AS first_label, p.* FROM (SELECT id, gb({GB_ARGS}) AS p FROM t)",
        None,
        "gb",
        "gb",
        "batch",
    ),
    (
        "tsql",
        "SELECT d.*, p.label AS predicted, p.probability FROM PREDICT(MODEL = 'gb', DATA = t AS d, RUNTIME = ONNX) "
        "WITH (label BIGINT, probability SQL_VARIANT) AS p",
        "tsql",
        "gb",
        "gb",
        "batch",
    ),
    (
        "tsql-star-strings",
        "SELECT d.customer_id, p.* FROM PREDICT(MODEL = 'churn', DATA = customers AS d) "
        "WITH (label BIGINT, probabilities SQL_VARIANT) AS p",
        "tsql",
        "churn",
        "churn",
        "batch",
    ),
    ("bigquery", "SELECT * FROM ML.PREDICT(MODEL iris, TABLE flowers)", "bigquery", "iris", "iris", "batch"),
    (
        "zipmap",
        "SELECT p.output_label, p.output_probability FROM PREDICT(MODEL = 'iris', DATA = flowers AS d) AS p",
        "tsql",
        "iris",
        "iris",
        "batch",
    ),
    ("scalar", "SELECT reg(x0, x1, x2, x3, x4) AS y, * FROM r", None, "reg", "reg", "batch"),
    # shapes the batch path leaves to DuckDB
    ("filter", f"SELECT id, gb({GB_ARGS}) AS p FROM t WHERE id % 3 = 0", None, "gb", "gb", "udf"),
    (
        "bigquery-subquery",
        "SELECT * FROM ML.PREDICT(MODEL gb, (SELECT id, f0, f1, f2, f3, f4, f5 FROM t WHERE id < 100))",
        "bigquery",
        "gb",
        "gb",
        "udf",
    ),
    ("order", f"SELECT id, gb({GB_ARGS}).label AS l FROM t ORDER BY id DESC", None, "gb", "gb", "udf"),
    ("expression", f"SELECT id + 1 AS k, gb({GB_ARGS}).label AS l FROM t", None, "gb", "gb", "udf"),
    (
        "tsql-cast",
        "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label INT) AS p",
        "tsql",
        "gb",
        "gb",
        "udf",
    ),
    (
        "columns-star",
        "SELECT id, p.label AS l FROM (SELECT id, gb(*COLUMNS('^f[0-5]$')) AS p FROM t)",
        None,
        "gb",
        "gb",
        "udf",
    ),
    ("limit", f"SELECT id, gb({GB_ARGS}).label AS l FROM t LIMIT 10", None, "gb", "gb", "udf"),
]
MODELS = {"gb": "models:/gb/1", "churn": "models:/churn/1", "iris": "models:/iris/1", "reg": "models:/reg/1"}
TABLES = {"gb": "t", "churn": "customers", "iris": "flowers", "reg": "r"}


def _both(registry, settings, tmp_path, query, dialect, model, table, **overrides):
    runs = {}
    for setting in ("auto", "off"):
        out = tmp_path / f"{setting}.parquet"
        result_table, result = score(
            settings,
            "duckdb",
            query,
            {model: MODELS[model]},
            {TABLES[table]: registry.tables[table]},
            out,
            dialect=dialect,
            batch_scoring=setting,
            **overrides,
        )
        manifest = json.loads(Path(manifest_path(out)).read_text())
        runs[setting] = (result_table, result, manifest, read_metadata(out))
    return runs


@pytest.mark.parametrize(
    ("query", "dialect", "model", "table", "path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_batch_path_equals_udf_path(registry, settings, tmp_path, query, dialect, model, table, path):
    runs = _both(registry, settings, tmp_path, query, dialect, model, table)
    (auto, auto_result, auto_manifest, auto_meta), (udf, udf_result, udf_manifest, udf_meta) = runs["auto"], runs["off"]
    assert (
        auto_manifest["scoring_path"] == auto_meta["scoring_path"] == auto_result.engine_details["scoring_path"] == path
    )
    assert udf_manifest["scoring_path"] == udf_meta["scoring_path"] == "udf"
    assert auto.schema == udf.schema  # names, order and types
    assert auto.equals(udf), "values differ between the batch and the UDF path"
    assert auto_result.rows_scored == udf_result.rows_scored
    assert auto_result.rows == udf_result.rows == auto.num_rows


def test_batch_path_matches_sklearn(registry, settings, tmp_path):
    case = registry.cases["gb"]
    table, result = score(
        settings,
        "duckdb",
        "SELECT d.*, p.label AS predicted, p.probability FROM PREDICT(MODEL = 'gb', DATA = t AS d, RUNTIME = ONNX) "
        "WITH (label BIGINT, probability SQL_VARIANT) AS p",
        {"gb": "models:/gb/1"},
        {"t": registry.tables["gb"]},
        tmp_path / "out.parquet",
        dialect="tsql",
        row_group_rows=1024,  # several batches, so that the pipeline's ordering is exercised
    )
    assert result.engine_details["scoring_path"] == "batch"
    # d.* keeps the table's columns in order (the ground truth `label` among them), then the outputs
    assert table.column_names == [*case.frame.columns, "predicted", "probability"]
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 1  # 400 rows: one batch
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(len(case.frame)))  # input order
    np.testing.assert_array_equal(table.column("predicted").to_numpy(), case.expected_label())
    np.testing.assert_allclose(np.array(table.column("probability").to_pylist()), case.expected_proba(), **TOL)
    assert result.rows_scored == {"gb": len(case.frame)}


@pytest.fixture(scope="module")
def gb_large(registry, tmp_path_factory):
    """The gb rows repeated 12 times with a running id and a few NULL features: several batches."""
    frame = registry.cases["gb"].frame
    parts = []
    for k in range(12):
        part = frame.copy()
        part["id"] = part["id"] + k * len(frame)
        parts.append(part)
    import pandas as pd

    big = pd.concat(parts, ignore_index=True)
    big.loc[[5, 1000, 4799], "f2"] = None
    path = tmp_path_factory.mktemp("large") / "large.parquet"
    pq.write_table(pa.Table.from_pandas(big, preserve_index=False), path, row_group_size=1000)
    return path, big


@pytest.mark.parametrize("null", ["null", "nan"])
def test_many_batches_keep_order_and_nulls(registry, settings, tmp_path, gb_large, null):
    path, big = gb_large
    registry.tables["gb_large"] = path
    TABLES["gb_large"] = "t"
    try:
        runs = _both(
            registry,
            settings,
            tmp_path,
            f"SELECT *, gb({GB_ARGS}) AS p FROM t",
            None,
            "gb",
            "gb_large",
            row_group_rows=1024,
            null=null,
        )
    finally:
        del registry.tables["gb_large"], TABLES["gb_large"]
    auto, auto_result, _, _ = runs["auto"]
    udf, udf_result, _, _ = runs["off"]
    assert auto_result.engine_details["scoring_path"] == "batch"
    assert auto.equals(udf)
    np.testing.assert_array_equal(auto.column("id").to_numpy(), np.arange(len(big)))
    labels = auto.column("p").combine_chunks().field("label")
    assert (labels.null_count == 3) == (null == "null")
    assert auto_result.rows_scored == udf_result.rows_scored == {"gb": len(big) - (3 if null == "null" else 0)}
    assert (
        pq.ParquetFile(tmp_path / "auto.parquet").metadata.num_row_groups
        == pq.ParquetFile(tmp_path / "off.parquet").metadata.num_row_groups
    )


def test_null_policy_error_is_the_same_error(registry, settings, tmp_path, gb_large):
    from scoring.errors import NullInputError

    path, _ = gb_large
    for setting in ("auto", "off"):
        with pytest.raises(NullInputError, match=r"input 'f2' received \d+ NULL"):
            score(
                settings,
                "duckdb",
                f"SELECT *, gb({GB_ARGS}) AS p FROM t",
                {"gb": "models:/gb/1"},
                {"t": path},
                tmp_path / f"{setting}.parquet",
                batch_scoring=setting,
                null="error",
                row_group_rows=1024,
            )
        assert not (tmp_path / f"{setting}.parquet").exists()
        failed = json.loads(Path(manifest_path(tmp_path / f"{setting}.parquet", failed=True)).read_text())
        assert failed["status"] == "failed" and failed["exit_code"] == NullInputError.exit_code
