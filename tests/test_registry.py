"""The registry path: HTTP server, content-addressed cache, run artifacts, local files, inspect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scoring.cli import main
from scoring.errors import ScoringError
from scoring.registry import Registry
from tests.engines import score
from tests.models import logged_name


def test_models_from_a_real_mlflow_server(registry, settings, mlflow_server, tmp_path):
    served = settings.model_copy(update={"tracking_uri": mlflow_server})
    table, result = score(
        served,
        "duckdb",
        "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p",
        {"gb": "models:/gb@champion"},
        {"t": registry.tables["gb"]},
        tmp_path / "out",
        dialect="tsql",
    )
    assert result.models["gb"].pinned_uri == "models:/gb/1"
    order = np.argsort(table.column("id").to_numpy())
    np.testing.assert_array_equal(table.column("label").to_numpy()[order], registry.cases["gb"].expected_label())


def test_pinned_version_is_served_from_the_cache(registry, tmp_path):
    uri = f"sqlite:///{registry.home / 'mlflow.db'}"
    first = Registry(uri, tmp_path / "cache").resolve("models:/gb@champion")
    assert first.path.is_file() and first.path.name == f"{first.sha256}.onnx"
    # With the artifact store gone, a cached pin still resolves and an uncached one cannot.
    artifacts, moved = registry.home / "artifacts", tmp_path / "artifacts-moved"
    shutil.move(artifacts, moved)
    try:
        second = Registry(uri, tmp_path / "cache").resolve("models:/gb/1")
        with pytest.raises(ScoringError):
            Registry(uri, tmp_path / "empty-cache").resolve("models:/gb/1")
    finally:
        shutil.move(moved, artifacts)
    assert second.sha256 == first.sha256 and second.path == first.path


def test_run_artifact_and_local_file(registry, settings, tmp_path):
    reg = Registry(registry.tracking_uri, tmp_path / "cache")
    pinned = reg.resolve("models:/reg/1")
    import mlflow

    run_id = mlflow.MlflowClient(registry.tracking_uri).get_model_version("reg", "1").run_id
    # As in a CLI process: MLflow's own current tracking URI is not the registry's.
    mlflow.set_tracking_uri((tmp_path / "elsewhere").as_uri())
    try:
        by_run = reg.resolve(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(registry.tracking_uri)
    assert by_run.sha256 == pinned.sha256 and by_run.version is None
    local = tmp_path / "reg.onnx"
    shutil.copy(pinned.path, local)
    case = registry.cases["reg"]
    table, result = score(
        settings,
        "duckdb",
        f"SELECT reg({', '.join(case.features)}) AS y FROM r",
        {"reg": str(local)},
        {"r": registry.tables["reg"]},
        tmp_path / "out",
    )
    assert result.models["reg"].sha256 == pinned.sha256
    np.testing.assert_allclose(
        table.column("y").to_numpy(),
        case.estimator.predict(case.frame[case.features].to_numpy(np.float32)),
        rtol=1e-5,
        atol=1e-4,
    )


def test_inspect_shows_binding_and_types(registry, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["models", "inspect", "models:/gb@champion", "--tracking-uri", registry.tracking_uri]) == 0
    text = capsys.readouterr().out
    assert "models:/gb/1" in text
    assert "ONNX input 'features' tensor(float) [N, 6]" in text
    assert "1. f0 (float)" in text and "6. f5 (float)" in text
    assert 'STRUCT("label" BIGINT, "probability" FLOAT[])' in text
    assert main(["models", "inspect", "models:/churn/1", "--json", "--tracking-uri", registry.tracking_uri]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [a["column"] for a in described["arguments"]] == ["plan", "region", "tenure", "monthly_spend"]
    assert described["arguments"][0]["type"] == "string"


def test_uris_named_in_queries_never_share_a_function():
    """'models:/a-b/1' and 'models:/a_b/1' both read as a_b in an identifier: each keeps its own."""
    from scoring.sql.references import Reference

    first = Reference("uri", "models:/a-b/1", "models:/a-b/1").function_name()
    second = Reference("uri", "models:/a_b/1", "models:/a_b/1").function_name()
    again = Reference("uri", "models:/a-b/1", "models:/a-b/1").function_name()
    assert first != second and again == first


def test_inspect_into_a_closed_pipe_exits_quietly(registry, tmp_path):
    """`scoring models inspect ... | head`: the reader leaves early; no traceback, no error line."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=registry.tracking_uri, SCORING_CACHE_DIR=str(tmp_path / "cache"))
    code = "import sys; from scoring.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "models", "inspect", "models:/gb/1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # before the command has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "error" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_a_separate_registry_needs_no_tracking_database(registry, tmp_path):
    """Registry and tracking stores apart: a tracking file not created yet is no reason to refuse."""
    reg = Registry(f"sqlite:///{tmp_path / 'tracking.db'}", tmp_path / "cache", registry_uri=registry.tracking_uri)
    assert reg.resolve("models:/gb@champion").pinned_uri == "models:/gb/1"


def test_a_model_with_external_data_is_cached_whole_and_scores(registry, settings, tmp_path):
    """mlflow.onnx.log_model's defaults put an MLP's weights in a separate <uuid> file beside
    model.onnx: both are cached in one content-addressed folder and the model scores."""
    import mlflow
    import mlflow.onnx
    from onnx import numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPRegressor

    case = registry.cases["reg"]
    x = case.frame[case.features].to_numpy(np.float32)
    est = MLPRegressor(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(x, case.estimator.predict(x))
    onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, 5]))], target_opset=17)
    # Weights as raw bytes, as torch exports write them (skl2onnx writes float lists, which
    # onnx never moves to external data).
    for i, tensor in enumerate(list(onx.graph.initializer)):
        onx.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    mlflow.set_tracking_uri(registry.tracking_uri)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onx, **logged_name("model"))  # save_as_external_data=True by default
    uri = f"runs:/{info.run_id}/model"
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "logged")))
    external = [p for p in local.iterdir() if p.is_file() and p.name not in ("MLmodel", "model.onnx")]
    external = [p for p in external if not p.name.endswith((".yaml", ".txt", ".json")) and "meta" not in p.name]
    assert external, f"MLflow stored no external data: {sorted(p.name for p in local.iterdir())}"

    table, result = score(
        settings,
        "duckdb",
        f"SELECT mlp({', '.join(case.features)}) AS y FROM r",
        {"mlp": uri},
        {"r": registry.tables["reg"]},
        tmp_path / "out",
    )
    ref = result.models["mlp"]
    assert ref.pinned_uri == uri
    assert ref.path.parent.name == ref.sha256  # blobs/<sha256>/model.onnx
    assert {p.name for p in ref.path.parent.iterdir()} >= {"model.onnx", *(p.name for p in external)}
    np.testing.assert_allclose(table.column("y").to_numpy(), est.predict(x), rtol=1e-4, atol=1e-4)
