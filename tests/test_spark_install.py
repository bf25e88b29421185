"""Without pyspark (a DuckDB-only install), the Spark engine fails with the install command, exit 11."""

from __future__ import annotations

import subprocess
import sys

from scoring.errors import ExitCode
from tests.conftest import spark_run_args

# `sys.modules[name] = None` makes every `import pyspark` raise ModuleNotFoundError, exactly as
# where the package is not installed; the rest of the interpreter is the test's own.
WITHOUT_PYSPARK = (
    "import sys; sys.modules['pyspark'] = None; from scoring.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_the_spark_engine_without_pyspark_is_one_line_and_exit_11(registry, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_PYSPARK,
            *spark_run_args(
                registry.tables["gb"], str(out), "SELECT id, gb(f0, f1, f2, f3, f4, f5).label AS label FROM t"
            ),
        ],
        env={**registry.env(), "SCORING_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == ExitCode.ENGINE_UNAVAILABLE == 11, proc.stderr
    assert proc.stderr.splitlines() == ['scoring: error: the Spark engine needs pyspark: pip install "scoring[spark]"']
    assert not out.exists()


def test_embedding_on_duckdb_needs_no_pyspark(registry, tmp_path):
    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "import duckdb, scoring\n"
        "from scoring.settings import Settings\n"
        f"s = Settings(tracking_uri={registry.tracking_uri!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
        "con = duckdb.connect()\n"
        "scoring.register(con, {'gb': 'models:/gb/1'}, settings=s)\n"
        f"sql = \"SELECT count(gb(f0, f1, f2, f3, f4, f5).label) FROM '{registry.tables['gb']}'\"\n"
        "print(con.execute(sql).fetchall()[0][0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(len(registry.cases["gb"].frame))
