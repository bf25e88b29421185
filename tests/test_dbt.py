"""A real `dbt run` on a tiny dbt-duckdb project whose SQL calls a registered model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np

PROJECT = Path(__file__).parent / "dbt_project"


def test_dbt_run_calls_the_model(registry, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    warehouse = tmp_path / "warehouse.duckdb"
    env = {
        **os.environ,
        **registry.env(),
        "WAREHOUSE": str(warehouse),
        "CUSTOMERS": str(registry.tables["churn"]),
        "SCORING_CACHE_DIR": str(tmp_path / "cache"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    dbt = Path(sys.executable).with_name("dbt")
    proc = subprocess.run(
        [str(dbt), "run", "--project-dir", str(project), "--profiles-dir", str(project)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT customer_id, churned, churn_probability FROM churn_scores ORDER BY 1").fetchall()
    case = registry.cases["churn"]
    np.testing.assert_array_equal([r[1] for r in rows], case.expected_label())
    np.testing.assert_allclose([r[2] for r in rows], case.expected_proba()[:, 1], rtol=1e-5, atol=1e-5)
