"""The two Spark UDF kinds: the pandas UDF (Spark 3.5, 4.0) and the Arrow UDF (4.1+) publish the
same tables, types, NULLs and row counts as each other and as DuckDB.

``SCORING_SPARK_UDF=pandas`` forces the pandas kind where pyspark also has the Arrow one, so the
default dev stack runs both kinds; on pyspark 3.5 / 4.0 the pandas kind is the one there is.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring import cache
from scoring.engines.spark_udfs import choose_kind, from_pandas, has_arrow_udf, to_pandas
from scoring.errors import ConfigError
from scoring.job import manifest_path
from tests.engines import score

# -- the conversions of the pandas kind, without Spark --------------------------------------------


def test_an_integer_column_with_nulls_is_integers_again():
    """Spark hands pandas an integer column with NULLs as float64 with NaN."""
    array = from_pandas(pd.Series([1.0, np.nan, 3.0]), pa.int64())
    assert array.type == pa.int64() and array.to_pylist() == [1, None, 3]


def test_a_fractional_float_for_an_integer_input_stays_float_for_the_model_to_refuse():
    array = from_pandas(pd.Series([1.5, np.nan]), pa.int64())
    assert array.type == pa.float64() and array.to_pylist() == [1.5, None]


def test_an_all_null_text_column_takes_the_input_type():
    array = from_pandas(pd.Series([None, None], dtype=object), pa.string())
    assert array.type == pa.string() and array.null_count == 2


def test_nan_and_none_arrive_as_null():
    assert from_pandas(pd.Series([0.5, np.nan]), pa.float32()).to_pylist() == [0.5, None]
    assert from_pandas(pd.Series(["a", None], dtype=object), pa.string()).to_pylist() == ["a", None]
    assert from_pandas(pd.Series([True, None], dtype=object), pa.float32()).to_pylist() == [True, None]


def test_results_keep_their_nulls_types_and_nan():
    scalar = to_pandas(pa.array([1, None], pa.int64()), pa.int64())
    assert pa.array(scalar.array).equals(pa.array([1, None], pa.int64()))
    floats = to_pandas(pa.array([math.nan, None], pa.float32()), pa.float32())
    assert pa.array(floats.array).to_pylist()[1] is None and math.isnan(pa.array(floats.array).to_pylist()[0])
    maps = to_pandas(
        pa.array([[("a", 0.5)], None], pa.map_(pa.string(), pa.float32())), pa.map_(pa.string(), pa.float32())
    )
    assert maps.tolist() == [{"a": 0.5}, None]
    lists = to_pandas(pa.array([[1.0, 2.0], None], pa.list_(pa.float32())), pa.list_(pa.float32()))
    assert lists.tolist() == [[1.0, 2.0], None]


def test_a_null_struct_row_becomes_null_fields():
    kind = pa.struct([("label", pa.int64()), ("probability", pa.list_(pa.float32()))])
    structs = pa.array([{"label": 1, "probability": [0.5]}, None], kind)
    frame = to_pandas(structs, kind)
    assert list(frame.columns) == ["label", "probability"]
    assert pa.array(frame["label"].array).to_pylist() == [1, None]
    assert frame["probability"].tolist() == [[0.5], None]


# -- the kinds on a real Spark ----------------------------------------------------------------------

KINDS = ["pandas", "arrow"]


@pytest.fixture(params=KINDS)
def kind(request):
    pytest.importorskip("pyspark")
    if request.param == "arrow" and not has_arrow_udf():
        import pyspark

        pytest.skip(f"pyspark {pyspark.__version__} has no arrow_udf (Spark 4.1+)")
    request.getfixturevalue("spark_ready")
    return request.param


def test_arrow_is_refused_where_pyspark_has_no_arrow_udf():
    pyspark = pytest.importorskip("pyspark")
    if has_arrow_udf():
        pytest.skip(f"pyspark {pyspark.__version__} has arrow_udf")
    with pytest.raises(ConfigError, match=rf"pyspark {pyspark.__version__} has no arrow_udf \(Spark 4.1\+\)"):
        choose_kind("arrow")
    assert choose_kind("auto") == "pandas"


@pytest.fixture(scope="module")
def with_nulls(registry, tmp_path_factory):
    """gb and churn tables with NULLs in a float input, an int input feeding a float, and a string."""
    folder = tmp_path_factory.mktemp("kinds")
    gb = registry.cases["gb"].frame.copy()
    gb.loc[[3, 250], "f2"] = None
    churn = registry.cases["churn"].frame.copy()
    churn["tenure"] = churn["tenure"].astype("Int64")
    churn.loc[[5, 6], "tenure"] = None
    churn.loc[[9], "plan"] = None
    paths = {"gb": folder / "gb.parquet", "churn": folder / "churn.parquet"}
    pq.write_table(pa.Table.from_pandas(gb, preserve_index=False), paths["gb"])
    pq.write_table(pa.Table.from_pandas(churn, preserve_index=False), paths["churn"])
    return paths


CASES = {
    "struct with an array, NULL inputs": (
        "SELECT id, s.label, s.probability FROM (SELECT id, gb(f0, f1, f2, f3, f4, f5) AS s FROM t)",
        "gb",
        "id",
    ),
    "strings and an integer column, NULL inputs": (
        "SELECT customer_id, s.label, s.probabilities FROM "
        "(SELECT customer_id, churn(plan, region, tenure, monthly_spend) AS s FROM t)",
        "churn",
        "customer_id",
    ),
    "map": (
        "SELECT d.*, p.output_label, p.output_probability FROM PREDICT(MODEL = 'iris', DATA = t AS d) AS p",
        "iris",
        None,
    ),
    "scalar": ("SELECT x0, reg(x0, x1, x2, x3, x4) AS y FROM t", "reg", "x0"),
}


def _sorted(table: pa.Table, key: str | None) -> pa.Table:
    keys = [key] if key else [n for n in table.column_names if not n.startswith("output")]
    return table.sort_by([(k, "ascending") for k in keys])


def _close(a, b) -> bool:
    if isinstance(a, dict) or (isinstance(a, list) and a and isinstance(a[0], tuple)):
        return _close(sorted(dict(a).items()), sorted(dict(b).items()))
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
    return a == b


@pytest.mark.spark
@pytest.mark.parametrize("case", list(CASES))
def test_the_kind_publishes_what_duckdb_publishes(registry, settings, with_nulls, tmp_path, case, kind):
    query, model, key = CASES[case]
    table_path = with_nulls.get(model, registry.tables[model])
    models = {model: f"models:/{model}/1"}
    duck, _ = score(settings, "duckdb", query, models, {"t": table_path}, tmp_path / "duck.parquet")
    cache.clear()
    spark, result = score(settings, "spark", query, models, {"t": table_path}, tmp_path / "spark", spark_udf=kind)
    manifest = json.loads(manifest_path(tmp_path / "spark").read_text())
    assert manifest["spark_udf"] == kind and manifest["spark_session"] == "classic"
    assert json.loads((tmp_path / "spark" / "_scoring.json").read_text())["spark_udf"] == kind
    duck, spark = _sorted(duck, key), _sorted(spark, key)
    assert spark.column_names == duck.column_names
    for name in duck.column_names:
        got, want = spark.column(name).to_pylist(), duck.column(name).to_pylist()
        assert all(_close(g, w) for g, w in zip(got, want, strict=True)), name
    nulls = {"gb": 2, "churn": 3}.get(model, 0)
    assert result.rows_scored == {model: len(duck) - nulls}  # NULL rows never reach the model


@pytest.mark.spark
def test_both_kinds_publish_identical_parquet(registry, settings, with_nulls, tmp_path, spark_ready):
    if not has_arrow_udf():
        pytest.skip("only the pandas kind exists on this pyspark")
    query, model, key = CASES["struct with an array, NULL inputs"]
    tables = {}
    for kind in KINDS:
        table, _ = score(
            settings, "spark", query, {model: "models:/gb/1"}, {"t": with_nulls["gb"]}, tmp_path / kind, spark_udf=kind
        )
        tables[kind] = _sorted(table, key)
    assert tables["pandas"].schema == tables["arrow"].schema
    assert tables["pandas"].equals(tables["arrow"])
