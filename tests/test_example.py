"""The example behind `make run`: its setup is idempotent and its job scores the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "MLFLOW_"))}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_make_run_steps_twice(tmp_path):
    """What `make run` runs, from a fresh folder, twice: the registry keeps versions 1 and 2."""
    setup = [sys.executable, str(ROOT / "sql" / "examples" / "setup_example.py")]
    first = subprocess.run(setup, cwd=tmp_path, env=_env(), capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "registered bc version 1" in first.stdout and "registered bc version 2" in first.stdout
    again = subprocess.run(setup, cwd=tmp_path, env=_env(), capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert "example registry ready: bc versions ['1', '2']" in again.stdout

    job = [
        str(BIN / "scoring"),
        "run",
        "--dialect",
        "tsql",
        "--model",
        "bc=models:/bc@champion",
        "--table",
        "patients=data/patients.parquet",
        "--sql",
        str(ROOT / "sql" / "examples" / "breast_cancer.sql"),
        "--output",
        "out/scored.parquet",
    ]
    run = subprocess.run(job, cwd=tmp_path, env=_env(), capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "model bc: models:/bc/1" in run.stdout and "wrote 569 rows to out/scored.parquet" in run.stdout
    scored = pq.read_table(tmp_path / "out" / "scored.parquet")
    assert scored.column_names == ["patient_id", "diagnosis", "predicted_diagnosis", "probabilities"]
    truth, predicted = scored["diagnosis"].to_numpy(), scored["predicted_diagnosis"].to_numpy()
    assert np.mean(truth == predicted) > 0.95  # a gradient-boosting fit on its own training rows
    manifest = json.loads((tmp_path / "out" / "scored.parquet.run.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["rows_scored"] == {"bc": 569}
