"""On a real local-cluster (two executor JVMs), each Python worker loads the model once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.spark


def test_each_worker_loads_each_model_once(registry, tmp_path):
    script = Path(__file__).with_name("spark_cluster_job.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(registry.tables["gb"]), registry.tracking_uri, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
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
    script = Path(__file__).with_name("spark_cluster_external_job.py")
    argv = [uri, str(registry.tables["reg"]), ", ".join(case.features), registry.tracking_uri, str(tmp_path / "cache")]
    proc = subprocess.run(
        [sys.executable, str(script), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(report["y"], est.predict(x), rtol=1e-4, atol=1e-4)
