"""Spark publishing through the session's Hadoop FileSystem: file:// URIs and plain paths, on a
real local-cluster (two executor JVMs), results equal to scikit-learn's."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_json_script

pytestmark = pytest.mark.spark


def test_file_uris_and_plain_paths_on_local_cluster(registry, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc, report = run_json_script(
        "spark_storage_job.py", str(registry.tables["gb"]), registry.tracking_uri, str(tmp_path / "c"), str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = registry.cases["gb"].expected_label()
    assert [r["output"] for r in report[:3]] == [f"file://{out}/uri", f"file://{out}/uri", f"{out}/plain"]
    assert all(r["rows"] == len(expected) for r in report[:3])
    # Each result beside its manifest; no temporary or previous folder left.
    assert report[3]["listing"] == ["plain", "plain.run.json", "uri", "uri.run.json"]
    for name in ("uri", "plain"):
        table = pq.read_table(out / name).sort_by("id")
        np.testing.assert_array_equal(table["label"].to_numpy(), expected)
        manifest = json.loads((out / name / "_scoring.json").read_text())
        assert manifest["status"] == "committed" and manifest["rows"] == len(expected)
        assert sorted(manifest["files"]) == sorted(p.name for p in (out / name).glob("*.parquet"))
