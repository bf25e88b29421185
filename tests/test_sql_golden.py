"""Golden SQL fixtures: the PREDICT grammar round-trips and each rewrite gives the expected SQL."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import sqlglot

from scoring.cache import load_model
from scoring.engines.duckdb import DuckDBEngine
from scoring.registry import Registry
from scoring.sql.compile import compile_query
from scoring.sql.dialects import read_dialect

FIXTURES = Path(__file__).parent / "fixtures" / "predict.sql"


def _cases() -> list[tuple[str, str, str, str]]:
    text = "\n".join(line for line in FIXTURES.read_text().splitlines() if not line.startswith("--"))
    cases = []
    for block in text.split("\n====\n"):
        headers = dict(line[2:].split(": ", 1) for line in block.splitlines() if line.startswith("# "))
        body = "\n".join(line for line in block.splitlines() if not line.startswith("# "))
        query, expected = (part.strip() for part in body.split("\n=>\n"))
        cases.append((headers["read"], headers["write"], query, expected))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def engine(registry, tmp_path_factory):
    """A real DuckDB engine with the gradient-boosting model bound as ``gb`` and its table as ``t``."""
    reg = Registry(registry.tracking_uri, tmp_path_factory.mktemp("cache"))
    eng = DuckDBEngine(con=duckdb.connect(), resolve=lambda uri: load_model(reg.resolve(uri), 1))
    eng.register_table("t", str(registry.tables["gb"]))
    eng.register_model("gb", load_model(reg.resolve("models:/gb/1"), 1))
    return eng


@pytest.mark.parametrize(
    ("read", "write", "query", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_golden(engine, read, write, query, expected):
    if write == "same":
        assert sqlglot.parse_one(query, dialect=read_dialect(read)).sql(dialect=read_dialect(read)) == expected
    else:
        compiled = compile_query(query, read, write, engine)
        assert compiled == expected
        engine.con.sql(compiled).limit(1).fetchall()  # and DuckDB runs it
