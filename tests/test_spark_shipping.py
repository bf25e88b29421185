"""Models reach Spark's executors whole (external data included), and a failed shipment says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scoring.errors import ModelLoadError
from tests.engines import score
from tests.models import logged_name

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def external_mlp(registry, tmp_path_factory):
    """An MLP logged with mlflow.onnx.log_model's defaults, so its weights go to a separate file.

    Returns the run URI, the fitted estimator, the inputs and the names of the external files.
    """
    import mlflow
    import mlflow.onnx
    from onnx import numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPRegressor

    case = registry.cases["reg"]
    x = case.frame[case.features].to_numpy(np.float32)
    est = MLPRegressor(hidden_layer_sizes=(64,), max_iter=50, random_state=1).fit(x, case.estimator.predict(x))
    onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, 5]))], target_opset=17)
    # Weights as raw bytes, as torch exports write them: skl2onnx's float lists never go external.
    for i, tensor in enumerate(list(onx.graph.initializer)):
        onx.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    mlflow.set_tracking_uri(registry.tracking_uri)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onx, **logged_name("model"))  # save_as_external_data=True by default
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path_factory.mktemp("mlp"))))
    external = {p.name for p in local.iterdir() if p.is_file() and p.name not in ("MLmodel", "model.onnx")}
    external = {n for n in external if not n.endswith((".yaml", ".txt", ".json")) and "meta" not in n}
    assert external, f"MLflow stored no external data: {sorted(p.name for p in local.iterdir())}"
    return f"runs:/{info.run_id}/model", est, x, external


def test_a_model_with_external_data_scores_on_spark(registry, settings, external_mlp, tmp_path, spark_ready):
    """The ONNX file and its external data reach the executors together (one archive), and score."""
    uri, est, x, external = external_mlp
    case = registry.cases["reg"]
    query = f"SELECT mlp({', '.join(case.features)}) AS y FROM r"
    table, result = score(settings, "spark", query, {"mlp": uri}, {"r": registry.tables["reg"]}, tmp_path / "out")
    ref = result.models["mlp"]
    assert {p.name for p in ref.path.parent.iterdir()} >= {"model.onnx", *external}  # cached as one folder
    np.testing.assert_allclose(table.column("y").to_numpy(), est.predict(x), rtol=1e-4, atol=1e-4)


def test_a_failed_shipment_names_the_model(registry, settings, tmp_path, spark_ready):
    """A cached model file removed between resolution and shipping (a cache cleaned by another
    process) is an error that names the model, not a UDF failing later on the executors."""
    import onnx

    from scoring.api import pin
    from scoring.cache import load_model
    from scoring.engines.spark import SparkEngine

    # A model of its own content, so no earlier test has shipped a file of the same name.
    onx = registry.cases["gb"].onnx
    unique = onnx.ModelProto()
    unique.CopyFrom(onx)
    unique.doc_string = f"shipping test {tmp_path.name}"
    path = tmp_path / "unique.onnx"
    onnx.save(unique, str(path))
    ref = pin({"gbx": str(path)}, settings)["gbx"]
    model = load_model(ref, 1)
    ref.path.unlink()  # what a concurrent cache clean would do
    engine = SparkEngine(spark=spark_ready)
    with pytest.raises(ModelLoadError, match=r"^model 'unique' cannot be shipped to the Spark executors: .+"):
        engine.register_model("gbx", model)
    assert "gbx" not in engine.models
