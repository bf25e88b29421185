"""Model.predict on the Arrow arrays engines really hand it: slices, validity buffers, widening."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.cache import load_model
from scoring.registry import Registry as ModelRegistry


def _window(col: pa.Array, start: int, stop: int) -> pa.Array:
    """Rows [start, stop) of ``col`` as an offset view with an all-valid validity buffer."""
    assert col.offset == 0
    everyone = pa.array(np.ones(len(col), dtype=bool)).buffers()[1]
    return pa.Array.from_buffers(col.type, stop - start, [everyone, col.buffers()[1]], null_count=-1, offset=start)


def _gb(registry, tmp_path):
    ref = ModelRegistry(registry.tracking_uri, tmp_path / "cache").resolve("models:/gb/1")
    return load_model(ref, 1)


def test_sliced_arrays_with_validity_buffers_score_like_sklearn(registry, tmp_path):
    case = registry.cases["gb"]
    # Engines hand over arrays with a validity buffer and no NULL in it, often sliced.
    table = duckdb.connect().read_parquet(str(registry.tables["gb"])).to_arrow_table()
    start, stop = 37, 311
    columns = [_window(table.column(f).combine_chunks(), start, stop) for f in case.features]
    assert all(c.offset == start and c.buffers()[0] is not None and c.null_count == 0 for c in columns)

    scored = _gb(registry, tmp_path).predict(columns)

    rows = case.frame[case.features].to_numpy(np.float32)[start:stop]
    np.testing.assert_array_equal(scored.field("label").to_numpy(), case.estimator.predict(rows))
    probability = np.stack(scored.field("probability").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probability, case.estimator.predict_proba(rows), atol=1e-5)


def test_integer_and_float32_columns_widen_into_the_model(registry, tmp_path):
    case = registry.cases["gb"]
    rows = case.frame[case.features].to_numpy(np.float32)[:50]
    integral = np.round(rows).astype(np.int32)
    columns = [pa.array(integral[:, j]) if j % 2 else pa.array(rows[:, j]) for j in range(len(case.features))]
    expected = np.where(np.arange(len(case.features)) % 2, integral, rows).astype(np.float32)

    scored = _gb(registry, tmp_path).predict(columns)

    np.testing.assert_array_equal(scored.field("label").to_numpy(), case.estimator.predict(expected))


def test_a_numeric_job_does_not_import_pandas(registry, tmp_path):
    """A DuckDB job needs no pandas: the lean install (`pip install scoring`, the DuckDB image)
    has none. Where pandas is installed, pyarrow's dataset module imports it anyway (tables are
    bound as pyarrow datasets), so the check is that the job runs, and scores the same, with
    pandas unimportable. The second run finds the pinned version in the cache, so MLflow (which
    needs pandas to log models, not to read them) is not imported either: a production job.
    """
    out = tmp_path / "out.parquet"
    code = (
        "import json, sys\n"
        "class NoPandas:  # import pandas fails as where it is not installed\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pandas':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "if '--no-pandas' in sys.argv:\n"
        "    sys.argv.remove('--no-pandas')\n"
        "    sys.meta_path.insert(0, NoPandas())\n"
        "from scoring.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(json.dumps({'code': code, 'pandas': 'pandas' in sys.modules}))\n"
    )
    args = [
        "run",
        "--model",
        "gb=models:/gb/1",
        "--table",
        f"t={registry.tables['gb']}",
        "--query",
        "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t",
        "--output",
        str(out),
        "--log-format",
        "json",
    ]
    env = {"MLFLOW_TRACKING_URI": registry.tracking_uri, "SCORING_CACHE_DIR": str(tmp_path / "cache")}
    reports, results = [], []
    for extra in ([], ["--no-pandas"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args, *extra],
            capture_output=True,
            text=True,
            env={**_base_env(), **env},
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        results.append(pq.read_table(out).column("label").to_pylist())
    assert reports[0]["code"] == 0 and reports[1] == {"code": 0, "pandas": False}
    assert results[0] == results[1]


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "MLFLOW_"))}


def _int32_model(tmp_path):
    """A real skl2onnx pipeline with an int32 input: one-hot codes of a count, then a regression."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import Int32TensorType
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    x = np.arange(20, dtype=np.int32).reshape(-1, 1)
    estimator = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LinearRegression()).fit(x, x[:, 0] % 3)
    onx = convert_sklearn(estimator, initial_types=[("count", Int32TensorType([None, 1]))], target_opset=17)
    path = tmp_path / "count.onnx"
    path.write_bytes(onx.SerializeToString())
    return estimator, path


def test_int64_values_that_fit_an_int32_input_score_and_others_fail_naming_it(settings, tmp_path):
    import pyarrow.parquet as pq
    import pytest

    from scoring.errors import ExitCode, InputDataError
    from tests.engines import score

    estimator, path = _int32_model(tmp_path)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"count": pa.array([3, 15, 7, 40], pa.int64())}), good)
    table, _ = score(
        settings, "duckdb", "SELECT count, m(count) AS y FROM t", {"m": str(path)}, {"t": good}, tmp_path / "a"
    )
    expected = estimator.predict(np.array([[3], [15], [7], [40]], dtype=np.int32))
    np.testing.assert_allclose(table.column("y").to_numpy(), expected.ravel(), atol=1e-5)

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"count": pa.array([3, 3_000_000_000], pa.int64())}), bad)
    with pytest.raises(InputDataError) as caught:
        score(settings, "duckdb", "SELECT m(count) AS y FROM t", {"m": str(path)}, {"t": bad}, tmp_path / "b")
    assert str(caught.value) == "model 'count' input 'count' is int32, but received 3000000000, outside its range"
    assert caught.value.exit_code == ExitCode.INPUT_DATA and not (tmp_path / "b").exists()
