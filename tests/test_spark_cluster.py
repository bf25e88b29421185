"""On a real local-cluster (two executor JVMs), each Python worker loads the model once."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_json_script

pytestmark = pytest.mark.spark


def test_each_worker_loads_each_model_once(registry, tmp_path):
    proc, report = run_json_script(
        "spark_cluster_job.py", str(registry.tables["gb"]), registry.tracking_uri, str(tmp_path / "cache")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(report["labels"], registry.cases["gb"].expected_label())
    workers = dict(w.split(":") for w in report["workers"])
    assert len(workers) == 2, report["workers"]  # both executors ran tasks
    assert set(workers.values()) == {"1"}, report["workers"]  # one session per worker, across 16 tasks


def test_a_model_with_external_data_scores_on_a_cluster(registry, tmp_path):
    """On executors of their own, where addFile takes no local folder, an external-data model
    arrives as one archive, unpacked beside its ONNX file, and scores like scikit-learn."""
    from tests.models import log_external_mlp

    case = registry.cases["reg"]
    uri, est, x, _external = log_external_mlp(case, registry.tracking_uri, str(tmp_path / "mlp"))
    argv = [uri, str(registry.tables["reg"]), ", ".join(case.features), registry.tracking_uri, str(tmp_path / "cache")]
    proc, report = run_json_script("spark_cluster_external_job.py", *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(report["y"], est.predict(x), rtol=1e-4, atol=1e-4)
