"""`scoring models inspect` on real converted models: skl2onnx, onnxmltools LightGBM, Spark MLlib.

Each test takes the example queries that inspect prints, runs each one with `scoring run` on the
model's real data, and compares what comes back with the native library's own predictions. So a
printed query that does not run, or a column name that the SQL front does not produce, fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.cli import main
from tests import models as M

FORMS = ("function", "bigquery", "tsql")


def _inspect(capsys, uri: str, *flags: str) -> tuple[dict[str, Any], str]:
    """The --json description and the text of the same model."""
    assert main(["models", "inspect", uri, "--json", *flags]) == 0
    described = json.loads(capsys.readouterr().out)
    assert main(["models", "inspect", uri, *flags]) == 0
    return described, capsys.readouterr().out


def _check_text(described: dict[str, Any], text: str) -> None:
    """The text lists each input column once and prints the same queries as --json."""
    lines = text.splitlines()
    for i, arg in enumerate(described["arguments"], start=1):
        assert sum(line.strip().startswith(f"{i}. {arg['column']} (") for line in lines) == 1, text
        assert sum(f" {arg['column']} (" in line for line in lines) == 1, text
    for form in FORMS:
        assert "error" not in described["sql"][form], described["sql"][form]
        assert f"  {described['sql'][form]['query']}" in lines
    assert described["sql"]["tsql"]["with"] in text


def _run_form(form: dict[str, Any], name: str, uri: str, table: str, data: Path, out: Path) -> pa.Table:
    code = main(
        [
            "run",
            "--dialect",
            form["dialect"],
            "--model",
            f"{name}={uri}",
            "--table",
            f"{table}={data}",
            "--query",
            form["query"],
            "--output",
            str(out),
        ]
    )
    assert code == 0, form["query"]
    return pq.read_table(out)


def _outputs(described: dict[str, Any], key: str, result: pa.Table) -> list[list[Any]]:
    """Each model output's values, in output order, read the way the form hands them back."""
    names = [o["name"] for o in described["outputs"]]
    added = [c["name"] for c in described["sql"][key]["added"]]
    if key == "function":  # one column: a STRUCT of the outputs (or the single output itself)
        assert added == ["result"]
        column = result.column("result").to_pylist()
        return [[row[n] for row in column] for n in names] if len(names) > 1 else [column]
    assert len(added) == len(names), added
    values = [result.column(a).to_pylist() for a in added]
    if key == "tsql":  # a LIST is declared NVARCHAR(MAX): JSON text
        kinds = [o["kind"] for o in described["outputs"]]
        values = [[json.loads(v) for v in col] if k != "scalar" else col for col, k in zip(values, kinds, strict=True)]
    return values


def _check_all_forms(
    described: dict[str, Any],
    uri: str,
    data: Path,
    tmp_path: Path,
    label: np.ndarray,
    proba: np.ndarray,
    key: str,
) -> None:
    name, table = described["sql_name"], described["table"]
    for form in FORMS:
        result = _run_form(described["sql"][form], name, uri, table, data, tmp_path / f"{form}.parquet")
        result = result.sort_by(key)
        got_label, got_proba = _outputs(described, form, result)
        np.testing.assert_array_equal(np.asarray(got_label), label, err_msg=form)
        np.testing.assert_allclose(np.asarray(got_proba, dtype=np.float64), proba, rtol=1e-4, atol=1e-5, err_msg=form)


@pytest.mark.parametrize("case_key", ["gb", "churn"])
def test_skl2onnx_examples_run_and_match_sklearn(registry, capsys, monkeypatch, tmp_path, case_key):
    """gb: one [N, 6] input named by the MLflow signature; churn: one input per column, strings too."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    case = registry.cases[case_key]
    uri = f"models:/{case_key}/1"
    described, text = _inspect(capsys, uri, "--name", "scorer", "--table", "rows_in")
    _check_text(described, text)
    assert [a["column"] for a in described["arguments"]] == case.features
    key = "id" if case_key == "gb" else "customer_id"
    # The table without gb's ground-truth `label` column, which shares an output's name.
    data = tmp_path / "rows_in.parquet"
    pq.write_table(pa.Table.from_pandas(case.frame[[key, *case.features]], preserve_index=False), data)
    _check_all_forms(described, uri, data, tmp_path, case.expected_label(), case.expected_proba(), key)


def test_lightgbm_label_declared_one_returns_one_per_row(registry, capsys, monkeypatch, tmp_path):
    """onnxmltools declares LightGBM's label as [1]; inspect shows it returns one value per row."""
    lightgbm = pytest.importorskip("lightgbm", reason="lightgbm is not installed (dev extra)")
    onnxmltools = pytest.importorskip("onnxmltools", reason="onnxmltools is not installed (dev extra)")
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=300, n_features=7, n_informative=4, random_state=4)
    x = x.astype(np.float32)
    features = [f"v{j}" for j in range(7)]
    est = lightgbm.LGBMClassifier(n_estimators=25, num_leaves=8, verbose=-1, random_state=4).fit(x, y)
    # onnxmltools 1.16 converts LightGBM up to opset 15.
    onx = onnxmltools.convert_lightgbm(
        est, initial_types=[("input", FloatTensorType([None, 7]))], zipmap=False, target_opset=15
    )
    frame = pd.DataFrame(x.astype(np.float64), columns=features)
    frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
    case = M.Case("lgbm", est, onx, frame, features, signature_frame=frame[features])
    version = M.register(case, "lgbm_inspect")
    uri = f"models:/lgbm_inspect/{version}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))

    described, text = _inspect(capsys, uri, "--name", "lgbm", "--table", "events")
    _check_text(described, text)
    label = next(o for o in described["outputs"] if o["name"] == "label")
    assert label["shape"] == [1] and label["returned_shape"] == [3] and label["kind"] == "scalar"
    assert "label: tensor(int64) declared [1], returned [3] for 3 rows -> scalar" in text
    data = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    _check_all_forms(described, uri, data, tmp_path, est.predict(x), est.predict_proba(x), "row_id")


@pytest.mark.spark
def test_spark_mllib_model_lists_its_30_columns_once(spark_ready, capsys, monkeypatch, tmp_path):
    """A Spark MLlib pipeline (VectorAssembler + LogisticRegression over the 30 breast-cancer
    columns) converted with onnxmltools: 30 ONNX inputs, each listed once; the printed queries
    match MLlib's own predictions. Uses the session-scoped Spark session, no other."""
    onnxmltools = pytest.importorskip("onnxmltools", reason="onnxmltools is not installed (dev extra)")
    from onnxmltools.convert.common.data_types import FloatTensorType
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    features = [c for c in frame.columns if c != "target"]
    frame = frame.astype({c: np.float64 for c in features})
    frame.insert(0, "patient_id", np.arange(len(frame), dtype=np.int64))
    df = spark_ready.createDataFrame(frame)
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=features, outputCol="features"),
            LogisticRegression(labelCol="target", maxIter=100, regParam=0.01),
        ]
    ).fit(df)
    native = pipeline.transform(df).select("patient_id", "prediction", "probability").orderBy("patient_id").collect()
    onx = onnxmltools.convert_sparkml(
        pipeline,
        "breast_cancer",
        [(c, FloatTensorType([None, 1])) for c in features],
        spark_session=spark_ready,
        target_opset=15,
    )
    model_file = tmp_path / "breast_cancer_mllib.onnx"
    model_file.write_bytes(onx.SerializeToString())
    capsys.readouterr()  # the converter prints its parameters
    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "home"))

    described, text = _inspect(capsys, str(model_file), "--name", "bc", "--table", "patients")
    _check_text(described, text)
    assert [a["column"] for a in described["arguments"]] == features
    assert len(described["inputs"]) == len(features) == 30  # 30 ONNX inputs, and 30 lines for them above
    assert described["binding"]["kind"] == "columns"
    table = tmp_path / "patients.parquet"
    pq.write_table(pa.Table.from_pandas(frame.drop(columns=["target"]), preserve_index=False), table)
    label = np.array([int(r["prediction"]) for r in native])
    proba = np.array([r["probability"].toArray() for r in native])
    _check_all_forms(described, str(model_file), table, tmp_path, label, proba, "patient_id")
