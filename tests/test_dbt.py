"""A real `dbt run` on a tiny dbt-duckdb project whose SQL calls a registered model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import yaml

PROJECT = Path(__file__).parent / "dbt_project"


def _dbt_run(registry, tmp_path: Path, project: Path, *args: str) -> str:
    """`dbt run` on ``project`` with the test registry; returns its output (it must succeed)."""
    env = {
        **os.environ,
        **registry.env(),
        "WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "CUSTOMERS": str(registry.tables["churn"]),
        "SCORING_CACHE_DIR": str(tmp_path / "cache"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    dbt = Path(sys.executable).with_name("dbt")
    proc = subprocess.run(
        [str(dbt), "run", "--project-dir", str(project), "--profiles-dir", str(project), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_example_project_materializes_tables():
    """A view calling a model function could not be read without the plugin (see the next test)."""
    config = yaml.safe_load((PROJECT / "dbt_project.yml").read_text())
    assert config["models"]["scoring_example"]["+materialized"] == "table"


def test_dbt_run_calls_the_model(registry, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    warehouse = tmp_path / "warehouse.duckdb"
    output = _dbt_run(registry, tmp_path, project)
    assert "scoring.dbt: view" not in output  # tables only: nothing to warn about
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT customer_id, churned, churn_probability FROM churn_scores ORDER BY 1").fetchall()
    case = registry.cases["churn"]
    np.testing.assert_array_equal([r[1] for r in rows], case.expected_label())
    np.testing.assert_allclose([r[2] for r in rows], case.expected_proba()[:, 1], rtol=1e-5, atol=1e-5)


def test_a_view_calling_the_model_cannot_be_read_without_the_plugin_and_is_warned_about(registry, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    source = (project / "models" / "churn_scores.sql").read_text()
    (project / "models" / "churn_view.sql").write_text("{{ config(materialized='view') }}\n" + source)
    first = _dbt_run(registry, tmp_path, project)
    assert "scoring.dbt: view" not in first  # the view did not exist when dbt opened the warehouse
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM churn_scores").fetchone()[0] == len(registry.cases["churn"].frame)
        with pytest.raises(duckdb.CatalogException, match="churn does not exist"):
            con.execute("SELECT * FROM churn_view").fetchall()
    second = _dbt_run(registry, tmp_path, project, "--select", "churn_view")
    warnings = [line for line in second.splitlines() if "scoring.dbt: view" in line]
    assert len(warnings) == 1, second[-3000:]
    assert "churn_view calls the model function churn" in warnings[0] and "+materialized: table" in warnings[0]
