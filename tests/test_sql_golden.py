"""Golden SQL fixtures: the PREDICT grammar round-trips and each rewrite gives the expected SQL.

The fixtures (``tests/fixtures/predict.sql``) follow sqlglot's optimizer fixtures: ``# key: value``
headers, then ``input;`` and ``expected;``. No registry and no model file: the catalog holds
model signatures only, and an in-memory DuckDB holds empty tables for their schemas (and
checks that every expected SQL binds).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sqlglot

from scoring.engines.duckdb import DuckDBEngine
from scoring.model import Argument, Model, Output
from scoring.registry import ModelRef
from scoring.sql.compile import Catalog, compile_query
from scoring.sql.dialects import read_dialect
from scoring.sql.qualify import Names
from scoring.sql.references import Reference

FIXTURES = Path(__file__).parent / "fixtures" / "predict.sql"


def _cases() -> list[dict[str, str]]:
    cases = []
    for block in FIXTURES.read_text().split("\n\n"):
        lines = [line for line in block.strip().splitlines() if not line.startswith("--")]
        if not lines:
            continue
        case = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# "))
        body = "\n".join(line for line in lines if not line.startswith("# "))
        query, expected = (part.strip() for part in body.rstrip().removesuffix(";").split(";\n"))
        case["input"], case["expected"] = query, expected
        cases.append(case)
    return cases


CASES = _cases()


def signature(name: str, arguments: list[tuple[str, str]], outputs: list[tuple[str, str, pa.DataType]]) -> Model:
    """A model described by its signature alone (never scored: golden tests only compile)."""
    ref = ModelRef(f"models:/{name}/1", name, "1", "0" * 64, Path("/nonexistent.onnx"), f"models:/{name}/1")
    return Model(
        ref=ref,
        session=None,
        inputs=(),
        outputs=tuple(Output(n, kind, t) for n, kind, t in outputs),  # type: ignore[arg-type]
        arguments=tuple(Argument(n, t) for n, t in arguments),
        matrix=True,
    )


GB = signature(
    "gb",
    [(f"f{j}", "tensor(float)") for j in range(6)],
    [("label", "scalar", pa.int64()), ("probability", "list", pa.list_(pa.float32()))],
)
URI_FN = "__scoring_models__gb_2"


@pytest.fixture(scope="module")
def catalog():
    con = duckdb.connect()
    features = ", ".join(f"f{j} DOUBLE" for j in range(6))
    con.execute(f"CREATE TABLE t (id BIGINT, {features}, label BIGINT)")
    con.execute(f"CREATE TABLE dbo__mytable (id BIGINT, {features})")
    con.execute("CREATE TABLE segments (id BIGINT, segment BIGINT)")
    engine = DuckDBEngine(con=con)
    engine.register_model("gb", GB)
    engine.register_model(URI_FN, GB)
    names = Names.of_bindings({"t": "", "dbo.mytable": "", "segments": ""})
    cat = Catalog(models={"gb": GB}, schema=engine.schema, names=names)
    cat.functions[Reference("uri", "models:/gb/2", "models:/gb/2").key] = (URI_FN, GB)
    yield cat, con
    con.close()


@pytest.mark.parametrize("case", CASES, ids=[c["title"] for c in CASES])
def test_golden(catalog, case):
    cat, con = catalog
    read, write = case["read"], case["write"]
    if write == "same":
        parsed = sqlglot.parse_one(case["input"], dialect=read_dialect(read))
        assert parsed.sql(dialect=read_dialect(read)) == case["expected"]
        return
    compiled = compile_query(case["input"], read, write, cat)
    assert compiled == case["expected"]
    con.sql(compiled).limit(0).fetchall()  # and DuckDB binds it
