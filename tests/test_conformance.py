"""Every scoring case, on every engine, checked against scikit-learn's own predictions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.engines import score

ENGINES = [pytest.param("duckdb", id="duckdb"), pytest.param("spark", id="spark", marks=pytest.mark.spark)]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def by_key(table, key):
    order = np.argsort(table.column(key).to_numpy())
    return table.take(order)


@pytest.fixture(params=ENGINES)
def engine(request):
    if request.param == "spark":
        request.getfixturevalue("spark_ready")
    return request.param


def test_tsql_predict_matches_sklearn_gradient_boosting(registry, settings, engine, tmp_path):
    case = registry.cases["gb"]
    table, result = score(
        settings,
        engine,
        "SELECT d.id, p.label, p.probability FROM PREDICT(MODEL = 'gb', DATA = t AS d, RUNTIME = ONNX) "
        "WITH (label BIGINT, probability SQL_VARIANT) AS p",
        {"gb": "models:/gb/1"},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
        dialect="tsql",
    )
    table = by_key(table, "id")
    assert table.column_names == ["id", "label", "probability"]
    np.testing.assert_array_equal(table.column("label").to_numpy(), case.expected_label())
    proba = np.array(table.column("probability").to_pylist())
    np.testing.assert_allclose(proba, case.expected_proba(), **TOL)
    assert result.rows == len(case.frame)


def test_function_call_binds_by_position(registry, settings, engine, tmp_path):
    case = registry.cases["gb"]
    args = ", ".join(case.features)
    table, _ = score(
        settings,
        engine,
        f"SELECT id, gb({args}) AS s FROM t",
        {"gb": "models:/gb@champion"},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
    )
    table = by_key(table, "id")
    rows = table.column("s").to_pylist()
    np.testing.assert_array_equal([r["label"] for r in rows], case.expected_label())
    np.testing.assert_allclose([r["probability"] for r in rows], case.expected_proba(), **TOL)


def test_bigquery_ml_predict_returns_inputs_and_predictions(registry, settings, engine, tmp_path):
    """Every input column, then one column per ONNX output named as the model names it."""
    case = registry.cases["gb"]
    table, _ = score(
        settings,
        engine,
        "SELECT * FROM ML.PREDICT(MODEL gb, (SELECT id, f0, f1, f2, f3, f4, f5 FROM t WHERE id < 100))",
        {"gb": "models:/gb/1"},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
        dialect="bigquery",
    )
    table = by_key(table, "id")
    assert table.column_names == ["id", *case.features, "label", "probability"]
    np.testing.assert_array_equal(table.column("label").to_numpy(), case.expected_label()[:100])
    np.testing.assert_allclose(np.array(table.column("probability").to_pylist()), case.expected_proba()[:100], **TOL)


def test_pipeline_with_string_columns_binds_by_name(registry, settings, engine, tmp_path):
    case = registry.cases["churn"]
    table, _ = score(
        settings,
        engine,
        "SELECT d.customer_id, p.* FROM PREDICT(MODEL = 'churn', DATA = customers AS d) "
        "WITH (label BIGINT, probabilities SQL_VARIANT) AS p",
        {"churn": "models:/churn/1"},
        {"customers": registry.tables["churn"]},
        tmp_path / "out",
        dialect="tsql",
    )
    table = by_key(table, "customer_id")
    assert table.column_names == ["customer_id", "label", "probabilities"]
    np.testing.assert_array_equal(table.column("label").to_numpy(), case.expected_label())
    np.testing.assert_allclose(np.array(table.column("probabilities").to_pylist()), case.expected_proba(), **TOL)


def test_pipeline_function_call_with_strings(registry, settings, engine, tmp_path):
    case = registry.cases["churn"]
    table, _ = score(
        settings,
        engine,
        "SELECT customer_id, churn(plan, region, tenure, monthly_spend).label AS churned FROM customers",
        {"churn": "models:/churn/latest"},
        {"customers": registry.tables["churn"]},
        tmp_path / "out",
    )
    table = by_key(table, "customer_id")
    np.testing.assert_array_equal(table.column("churned").to_numpy(), case.expected_label())


def test_zipmap_output_becomes_a_map(registry, settings, engine, tmp_path):
    case = registry.cases["iris"]
    table, _ = score(
        settings,
        engine,
        "SELECT p.output_label, p.output_probability FROM PREDICT(MODEL = 'iris', DATA = flowers AS d) AS p",
        {"iris": "models:/iris/1"},
        {"flowers": registry.tables["iris"]},
        tmp_path / "out",
        dialect="tsql",
    )
    # no ORDER BY: the scan keeps file order on one file, which matches the frame
    np.testing.assert_array_equal(table.column("output_label").to_numpy(), case.expected_label())
    maps = table.column("output_probability").to_pylist()
    got = np.array([[dict(m)[k] for k in range(3)] for m in maps])
    np.testing.assert_allclose(got, case.expected_proba(), **TOL)


def test_regressor_returns_a_scalar(registry, settings, engine, tmp_path):
    case = registry.cases["reg"]
    args = ", ".join(case.features)
    table, _ = score(
        settings,
        engine,
        f"SELECT reg({args}) AS y FROM r",
        {"reg": "models:/reg/1"},
        {"r": registry.tables["reg"]},
        tmp_path / "out",
    )
    assert table.schema.field("y").type in ("float", "double") or str(table.schema.field("y").type) == "float"
    expected = case.estimator.predict(case.frame[case.features].to_numpy(np.float32))
    np.testing.assert_allclose(table.column("y").to_numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("uri", "case_key"),
    [
        ("models:/gb/1", "gb"),
        ("models:/gb/2", "gb_v2"),
        ("models:/gb@champion", "gb"),
        ("models:/gb@challenger", "gb_v2"),
        ("models:/gb/latest", "gb_v2"),
    ],
)
def test_versions_and_aliases_pick_the_right_model(registry, settings, tmp_path, uri, case_key):
    case = registry.cases[case_key]
    table, result = score(
        settings,
        "duckdb",
        "SELECT p.probability FROM PREDICT(MODEL = 'm', DATA = t AS d) WITH (probability SQL_VARIANT) AS p",
        {"m": uri},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
        dialect="tsql",
    )
    np.testing.assert_allclose(np.array(table.column("probability").to_pylist()), case.expected_proba(), **TOL)
    assert result.models["m"].version == ("1" if case_key == "gb" else "2")


def test_model_uri_inside_the_query(registry, settings, engine, tmp_path):
    case = registry.cases["gb_v2"]
    table, result = score(
        settings,
        engine,
        "SELECT d.id, p.label FROM PREDICT(MODEL = 'models:/gb/2', DATA = t AS d) WITH (label INT) AS p",
        {},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
        dialect="tsql",
    )
    np.testing.assert_array_equal(by_key(table, "id").column("label").to_numpy(), case.expected_label())
    # Reported under the URI as written, pinned like a bound model.
    assert result.models["models:/gb/2"].version == "2"
    assert result.rows_scored == {"models:/gb/2": len(case.expected_label())}


@pytest.fixture(scope="module")
def gb_with_nulls(registry, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = registry.cases["gb"].frame.copy()
    frame.loc[[3, 250], "f2"] = None
    path = tmp_path_factory.mktemp("nulls") / "nulls.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def test_null_input_gives_null_outputs_for_that_row_only(registry, settings, engine, gb_with_nulls, tmp_path):
    case = registry.cases["gb"]
    table, result = score(
        settings,
        engine,
        "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t",
        {"gb": "models:/gb/1"},
        {"t": gb_with_nulls},
        tmp_path / "out",
    )
    table = by_key(table, "id")
    labels = table.column("label").to_pylist()
    assert labels[3] is None and labels[250] is None
    keep = [i for i in range(len(labels)) if i not in (3, 250)]
    np.testing.assert_array_equal(np.array(labels, dtype=object)[keep].astype(int), case.expected_label()[keep])
    assert result.rows_scored["gb"] == len(labels) - 2  # the NULL rows never reach the model


def test_null_as_nan_reaches_the_model(registry, settings, engine, gb_with_nulls, tmp_path):
    table, _ = score(
        settings,
        engine,
        "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t",
        {"gb": "models:/gb/1"},
        {"t": gb_with_nulls},
        tmp_path / "out",
        null="nan",
    )
    labels = by_key(table, "id").column("label").to_pylist()
    assert labels[3] is not None and labels[250] is not None  # scored with NaN, not skipped
    keep = [i for i in range(len(labels)) if i not in (3, 250)]
    # scikit-learn's GradientBoostingClassifier refuses NaN, so only the other rows have a reference
    np.testing.assert_array_equal(np.array(labels)[keep], registry.cases["gb"].expected_label()[keep])


def test_star_arguments_are_left_to_the_engine(registry, settings, tmp_path):
    """`m(*COLUMNS('^f[0-5]$'))` is one argument in the text and six once DuckDB unpacks it."""
    table, _ = score(
        settings,
        "duckdb",
        "SELECT id, p.label AS label FROM (SELECT id, gb(*COLUMNS('^f[0-5]$')) AS p FROM t)",
        {"gb": "models:/gb/1"},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
    )
    np.testing.assert_array_equal(by_key(table, "id").column("label").to_numpy(), registry.cases["gb"].expected_label())


def test_a_boolean_column_feeds_a_float_input(registry, settings, engine, tmp_path):
    """bool -> number is a safe conversion: the table-valued forms cast it, on both engines."""
    case = registry.cases["gb"]
    frame = case.frame.copy()
    frame["f0"] = frame["f0"] > 0
    path = tmp_path / "flags.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    table, _ = score(
        settings,
        engine,
        "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p",
        {"gb": "models:/gb/1"},
        {"t": path},
        tmp_path / "out",
        dialect="tsql",
    )
    features = frame[case.features].to_numpy(np.float32)
    np.testing.assert_array_equal(by_key(table, "id").column("label").to_numpy(), case.estimator.predict(features))
