"""Models reach Spark's executors whole (external data included), and a failed shipment says so."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.errors import ModelLoadError
from tests.engines import score
from tests.models import log_external_mlp

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def external_mlp(registry, tmp_path_factory):
    """An MLP logged with MLflow's defaults, its weights in a file of their own (see tests.models)."""
    return log_external_mlp(registry.cases["reg"], registry.tracking_uri, str(tmp_path_factory.mktemp("mlp")))


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
