"""The vendors' PREDICT forms, run unchanged on both engines, checked against scikit-learn.

Queries are the vendors' documented shapes (Synapse / SQL Server PREDICT, the Synapse
model-table pattern, BigQuery's ONNX tutorial, Fabric's scalar PREDICT); only the table and
model bindings are ours. One Spark session serves every query of this module.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring import cache
from scoring.errors import (
    InputDataError,
    ModelLoadError,
    ModelNotFoundError,
    PredictSyntaxError,
    QueryError,
    SchemaMismatchError,
)
from scoring.sql.scripts import StatementRefused
from tests.engines import score

ENGINES = [pytest.param("duckdb", id="duckdb"), pytest.param("spark", id="spark", marks=pytest.mark.spark)]
FEATURES = "f0, f1, f2, f3, f4, f5"


@pytest.fixture(params=ENGINES)
def engine(request):
    if request.param == "spark":
        request.getfixturevalue("spark_ready")
    return request.param


@pytest.fixture(scope="module")
def data(registry, tmp_path_factory):
    """The gb table, a second table to join (id, segment) and a Synapse-style models table."""
    folder = tmp_path_factory.mktemp("forms")
    frame = registry.cases["gb"].frame
    segments = pa.table({"id": pa.array(frame["id"].to_numpy()), "segment": pa.array(frame["id"].to_numpy() % 3)})
    pq.write_table(segments, folder / "segments.parquet")
    # The churn pipeline takes one input per column, so ONNX bytes alone (no MLflow signature) bind by name.
    onnx_bytes = registry.cases["churn"].onnx.SerializeToString()
    models = pa.table(
        {
            "Id": pa.array([1, 2, 3, 4], pa.int64()),
            "model": pa.array([onnx_bytes, b"not an onnx model", None, onnx_bytes], pa.binary()),
            "uri": pa.array(["models:/churn/1", None, None, "models:/churn/latest"]),
        }
    )
    pq.write_table(models, folder / "models.parquet")
    return {
        "t": registry.tables["gb"],
        "customers": registry.tables["churn"],
        "segments": folder / "segments.parquet",
        "models": folder / "models.parquet",
    }


def _labels(table: pa.Table, column: str = "label", key: str = "id") -> np.ndarray:
    order = np.argsort(table.column(key).to_numpy())
    return table.column(column).to_numpy()[order]


def _run(settings, engine, query, tables, tmp_path, models=None, dialect="tsql"):
    return score(
        settings,
        engine,
        query,
        {"gb": "models:/gb/1"} if models is None else models,
        tables,
        tmp_path / "out",
        dialect=dialect,
    )


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binding", "written"),
    [
        ("mytable", "dbo.mytable"),  # qualified in the query, bound by its last part
        ("dbo.mytable", "dbo.mytable"),  # bound qualified
        ("dbo.mytable", "[dbo].[mytable]"),
        ("mytable", '"dbo"."mytable"'),
    ],
)
def test_qualified_and_quoted_names_resolve(registry, settings, data, engine, tmp_path, binding, written):
    query = (
        f"SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = {written} AS d, RUNTIME = ONNX) "
        "WITH (label BIGINT) AS p"
    )
    table, _ = _run(settings, engine, query, {binding: data["t"]}, tmp_path)
    assert table.column_names == ["id", "label"]
    np.testing.assert_array_equal(_labels(table), registry.cases["gb"].expected_label())


def test_an_unbound_name_names_the_closest(settings, data, tmp_path):
    query = "SELECT d.id FROM PREDICT(MODEL = 'gb', DATA = dbo.mytabel AS d) WITH (label BIGINT) AS p"
    with pytest.raises(InputDataError, match=r"table 'dbo.mytabel' is not bound.*did you mean 'dbo.mytable'"):
        _run(settings, "duckdb", query, {"dbo.mytable": data["t"]}, tmp_path)


# -- SELECT * over a join -------------------------------------------------------------------------


def test_star_over_a_join_keeps_every_table_and_renames_repeats(registry, settings, data, engine, tmp_path):
    query = (
        "SELECT * FROM segments AS c JOIN PREDICT(MODEL = 'gb', DATA = t AS d, RUNTIME = ONNX) "
        "WITH (label BIGINT) AS p ON c.id = d.id"
    )
    table, _ = _run(settings, engine, query, {"t": data["t"], "segments": data["segments"]}, tmp_path)
    assert table.column_names == ["id", "segment", "id_1", "f0", "f1", "f2", "f3", "f4", "f5", "label", "label_1"]
    np.testing.assert_array_equal(_labels(table, "label_1"), registry.cases["gb"].expected_label())
    np.testing.assert_array_equal(_labels(table, "segment"), np.sort(table.column("id").to_numpy()) % 3)


# -- DATA, WITH, RUNTIME --------------------------------------------------------------------------

FORMS = {
    # Synapse's documented pattern: a CTE as DATA with no alias; its name qualifies the columns.
    "cte without alias": "WITH predict_input AS (SELECT id, f0, f1, f2, f3, f4, f5 FROM dbo.t) "
    "SELECT predict_input.id, p.label FROM PREDICT(MODEL = 'gb', DATA = predict_input, RUNTIME = ONNX) "
    "WITH (label BIGINT) AS p",
    "subquery with alias, no RUNTIME": "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', "
    "DATA = (SELECT * FROM t WHERE id >= 0) AS d) WITH (label BIGINT) AS p",
    "WITH without AS, bracketed, NOT NULL": "SELECT id, label FROM PREDICT(MODEL = 'gb', DATA = t AS d) "
    "WITH ([label] [bigint] NOT NULL, probability NVARCHAR(MAX) COLLATE Latin1_General_CI_AS NULL) p",
}


@pytest.mark.parametrize("form", list(FORMS))
def test_data_and_with_forms(registry, settings, data, engine, tmp_path, form):
    table, _ = _run(settings, engine, FORMS[form], {"t": data["t"]}, tmp_path)
    assert table.column_names == ["id", "label"]
    np.testing.assert_array_equal(_labels(table), registry.cases["gb"].expected_label())


def test_parameters_is_refused(settings, data, tmp_path):
    query = "SELECT d.id FROM PREDICT(MODEL = 'gb', DATA = t AS d, PARAMETERS = N'@x int') WITH (label BIGINT) AS p"
    with pytest.raises(PredictSyntaxError, match=r"PARAMETERS = \.\.\. is not supported"):
        _run(settings, "duckdb", query, {"t": data["t"]}, tmp_path)


TSQL_TYPES = {
    "BIT": pa.bool_(),
    "TINYINT": pa.uint8(),
    "SMALLINT": pa.int16(),
    "INT": pa.int32(),
    "BIGINT": pa.int64(),
    "REAL": pa.float32(),
    "FLOAT(24)": pa.float32(),
    "FLOAT": pa.float64(),
    "FLOAT(53)": pa.float64(),
    "DECIMAL(10, 2)": pa.decimal128(10, 2),
    "NUMERIC(18, 3)": pa.decimal128(18, 3),
    "MONEY": pa.decimal128(19, 4),
    "SMALLMONEY": pa.decimal128(10, 4),
    "NVARCHAR(20)": pa.string(),
    "VARCHAR(MAX)": pa.string(),
}
SPARK_TYPES = {"TINYINT": pa.int16()}  # Spark has no unsigned byte: the next wider type


@pytest.mark.parametrize("declared", list(TSQL_TYPES))
def test_tsql_types_in_with_mean_what_tsql_means(registry, settings, data, engine, tmp_path, declared):
    query = f"SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label {declared}) AS p"
    table, _ = _run(settings, engine, query, {"t": data["t"]}, tmp_path)
    expected = (SPARK_TYPES if engine == "spark" else {}).get(declared, TSQL_TYPES[declared])
    assert table.schema.field("label").type == expected
    labels = [int(v) for v in _labels(table).tolist()]  # bool, decimal and text all read back as 0/1
    np.testing.assert_array_equal(labels, registry.cases["gb"].expected_label())


# -- BigQuery ML.PREDICT --------------------------------------------------------------------------


def test_ml_predict_names_outputs_after_the_onnx_outputs(registry, settings, data, engine, tmp_path):
    """The BigQuery ONNX tutorial's query shape, with backticked project.dataset names."""
    query = (
        "SELECT * FROM ML.PREDICT(MODEL `example-project.example_dataset.gb`, "
        f"(SELECT id, {FEATURES} FROM `bigquery-public-data.ml_datasets.t` LIMIT 1000))"
    )
    table, _ = _run(settings, engine, query, {"t": data["t"]}, tmp_path, dialect="bigquery")
    assert table.column_names == ["id", "f0", "f1", "f2", "f3", "f4", "f5", "label", "probability"]
    np.testing.assert_array_equal(_labels(table), registry.cases["gb"].expected_label())


def test_ml_predict_refuses_an_input_named_like_an_output(settings, data, tmp_path):
    with pytest.raises(SchemaMismatchError, match=r"input column 'label' .* has the name of an output"):
        _run(
            settings,
            "duckdb",
            "SELECT * FROM ML.PREDICT(MODEL gb, TABLE t)",
            {"t": data["t"]},
            tmp_path,
            dialect="bigquery",
        )


def test_ml_predict_nested_in_another_ml_predict_and_a_join(registry, settings, data, engine, tmp_path):
    """Innermost first; each occurrence scores every row once (gb twice: 2 x rows)."""
    cache.clear()
    query = (
        "SELECT s.segment, o.* FROM segments AS s JOIN ML.PREDICT(MODEL challenger, "
        f"(SELECT id, {FEATURES}, label AS first_label FROM ML.PREDICT(MODEL gb, (SELECT id, {FEATURES} FROM t)))) "
        "AS o ON s.id = o.id"
    )
    models = {"gb": "models:/gb/1", "challenger": "models:/gb/2"}
    table, result = _run(
        settings, engine, query, {"t": data["t"], "segments": data["segments"]}, tmp_path, models, "bigquery"
    )
    assert table.column_names == [
        *["segment", "id", "f0", "f1", "f2", "f3", "f4", "f5", "first_label", "label", "probability"]
    ]
    np.testing.assert_array_equal(_labels(table, "first_label"), registry.cases["gb"].expected_label())
    np.testing.assert_array_equal(_labels(table), registry.cases["gb_v2"].expected_label())
    rows = len(registry.cases["gb"].frame)
    assert result.rows_scored == {"gb": rows, "challenger": rows}


# -- Fabric scalar PREDICT ------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "case"), [("gb/1", "gb"), ("models:/gb@challenger", "gb_v2"), ("gb", "gb")])
def test_fabric_scalar_predict(registry, settings, data, engine, tmp_path, model, case):
    query = f"SELECT id, PREDICT('{model}', {FEATURES}).label AS label FROM t"
    table, _ = _run(settings, engine, query, {"t": data["t"]}, tmp_path, {"gb": "models:/gb/1"}, "spark")
    assert table.column_names == ["id", "label"]
    np.testing.assert_array_equal(_labels(table), registry.cases[case].expected_label())


# -- scripts and model tables ---------------------------------------------------------------------

SCRIPTS = {
    # The Synapse documentation's pattern: the model from a varbinary(max) column of a table.
    "declare a model from a models table": (
        "DECLARE @model VARBINARY(max) = (SELECT model FROM dbo.Models WHERE Id = 1);\n"
        "SELECT d.customer_id, p.label FROM PREDICT(MODEL = @model, DATA = dbo.customers AS d, RUNTIME = ONNX) "
        "WITH (label BIGINT) AS p",
        "churn",
    ),
    "set a model URI from a models table": (
        "DECLARE @model NVARCHAR(200);\nSET @model = (SELECT uri FROM dbo.Models WHERE Id = 4);\n"
        "SELECT d.customer_id, p.label FROM PREDICT(MODEL = @model, DATA = customers AS d) WITH (label BIGINT) AS p",
        "churn",
    ),
    "scalar subquery as MODEL": (
        "SELECT d.customer_id, p.label FROM PREDICT(MODEL = (SELECT model FROM Models WHERE Id = 1), "
        "DATA = customers AS d) WITH (label BIGINT) AS p",
        "churn",
    ),
    "view, temp table, insert": (
        "CREATE VIEW dbo.features AS SELECT customer_id, plan, region, tenure, monthly_spend FROM dbo.customers;\n"
        "SELECT d.customer_id, p.label INTO #scored FROM PREDICT(MODEL = 'churn', DATA = dbo.features AS d) "
        "WITH (label BIGINT) AS p;\n"
        "INSERT INTO dbo.results SELECT customer_id, label FROM #scored",
        "churn",
    ),
    "create temp table as select": (
        "CREATE TEMP TABLE scored AS SELECT customer_id, churn(plan, region, tenure, monthly_spend).label AS label "
        "FROM customers;\nSELECT * FROM scored",
        "churn",
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_scripts(registry, settings, data, engine, tmp_path, name):
    script, case = SCRIPTS[name]
    dialect = "duckdb" if name.startswith("create temp") else "tsql"
    tables = {"customers": data["customers"], "Models": data["models"]}
    table, result = _run(settings, engine, script, tables, tmp_path, {"churn": "models:/churn/1"}, dialect)
    assert table.column_names == ["customer_id", "label"]
    np.testing.assert_array_equal(_labels(table, key="customer_id"), registry.cases[case].expected_label())
    if "models table" in name or "MODEL" in name:
        pinned = [ref for key, ref in result.models.items() if key != "churn"]
        assert len(pinned) == 1 and len(pinned[0].sha256) == 64
        assert result.rows_scored[next(k for k in result.models if k != "churn")] == len(registry.cases[case].frame)


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        ("Id = 99", ModelNotFoundError, "returned no row"),
        ("Id IN (1, 4)", QueryError, "returned more than one row"),
        ("Id = 3", ModelNotFoundError, "returned NULL"),
        ("Id = 2", ModelLoadError, "are not an ONNX model"),
    ],
)
def test_a_bad_model_table_value_fails_naming_the_table(settings, data, tmp_path, where, error, message):
    script = (
        f"SELECT d.customer_id FROM PREDICT(MODEL = (SELECT model FROM dbo.Models WHERE {where}), "
        "DATA = customers AS d) AS p"
    )
    with pytest.raises(error, match=f"model table 'dbo.Models'.*{message}"):
        _run(settings, "duckdb", script, {"customers": data["customers"], "Models": data["models"]}, tmp_path, {})


@pytest.mark.parametrize(
    ("dialect", "statement"),
    [
        ("duckdb", "COPY t TO '/tmp/scoring-copy.csv'"),
        ("duckdb", "ATTACH '/tmp/scoring-x.db' AS x"),
        ("duckdb", "INSTALL httpfs"),
        ("duckdb", "LOAD httpfs"),
        ("duckdb", "EXPORT DATABASE '/tmp/scoring-export'"),
        ("duckdb", "SET threads = 1"),
        ("duckdb", "RESET threads"),
        ("duckdb", "PRAGMA version"),
        ("spark", "ADD JAR /tmp/x.jar"),
        ("spark", "SET spark.sql.ansi.enabled = false"),
        ("tsql", "SET NOCOUNT ON"),
        ("spark", "CREATE TABLE x USING parquet LOCATION '/tmp/scoring-x' AS SELECT * FROM t"),
    ],
)
def test_statements_outside_the_script_subset_are_refused_before_anything_runs(
    settings, data, tmp_path, dialect, statement
):
    out = tmp_path / "out"
    script = f"{statement};\nSELECT id FROM t"
    with pytest.raises(StatementRefused, match="is not allowed in a scoring script"):
        _run(settings, "duckdb", script, {"t": data["t"]}, tmp_path, dialect=dialect)
    assert not out.exists()
