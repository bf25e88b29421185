"""``scoring models inspect``: what a user needs to know before writing a query."""

from __future__ import annotations

from typing import Any

from scoring import types
from scoring.cache import load_model
from scoring.job import registry_for
from scoring.redact import redact_data
from scoring.settings import Settings


def describe_model(uri: str, settings: Settings) -> dict[str, Any]:
    """Pin and load ``uri``; describe its tensors, signature, binding and SQL types."""
    ref = registry_for(settings).resolve(uri)
    model = load_model(ref, 1, settings.null)
    return redact_data(
        {
            "uri": uri,
            "pinned_uri": ref.pinned_uri,
            "name": ref.name,
            "version": ref.version,
            "sha256": ref.sha256,
            "inputs": [
                {"name": t.name, "type": t.onnx_type, "shape": [d if isinstance(d, int) else "N" for d in t.shape]}
                for t in model.inputs
            ],
            "outputs": [
                {
                    "name": o.name,
                    "kind": o.kind,
                    "duckdb_type": types.duckdb_type(o.arrow_type),
                    "spark_type": types.spark_type(o.arrow_type),
                }
                for o in model.outputs
            ],
            "signature": ref.signature,
            "binding": "one [N, F] input fed by these columns, in order"
            if model.matrix
            else "one input per column, bound by name",
            "arguments": [{"column": a.name, "type": types.onnx_element(a.onnx_type)} for a in model.arguments],
            "returns": {"duckdb": types.duckdb_type(model.output_type), "spark": types.spark_type(model.output_type)},
        }
    )


def format_description(d: dict[str, Any]) -> str:
    """Human-readable form of :func:`describe_model`."""
    lines = [f"model {d['name']}  {d['pinned_uri']}  sha256 {d['sha256'][:16]}", "inputs:"]
    lines += [f"  {t['name']}: {t['type']} {t['shape']}" for t in d["inputs"]]
    lines.append("outputs:")
    lines += [f"  {o['name']}: {o['kind']} -> DuckDB {o['duckdb_type']}, Spark {o['spark_type']}" for o in d["outputs"]]
    lines.append(f"MLflow signature: {'yes' if d['signature'] else 'none'}")
    lines.append(f"binding: {d['binding']}:")
    lines += [f"  {i + 1}. {a['column']} ({a['type']})" for i, a in enumerate(d["arguments"])]
    lines.append(f"SQL function returns: {d['returns']['duckdb']}")
    return "\n".join(lines)
