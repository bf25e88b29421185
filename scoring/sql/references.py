"""Collect every model reference of a statement before anything is compiled or registered.

A PREDICT form names its model in one of these ways, each a :class:`Reference`:

- ``bound``: a name bound with ``--model NAME=URI`` (case-insensitive; for a qualified
  name such as `` `project.dataset.m` `` the full name, else its last part);
- ``uri``: a registry URI or ONNX path (``'models:/churn@champion'``), or Fabric's
  ``'name/version'`` / ``'name@alias'``, which mean ``models:/name/version`` / ``models:/name@alias``;
- ``table``: a scalar subquery over a model table (``MODEL = (SELECT model FROM dbo.Models
  WHERE Id = 1)``, directly or through a ``@variable``): a BINARY value is ONNX bytes, a
  text value a registry URI.

The job resolves, pins and registers each reference once (:attr:`Reference.key`) and hands
the rewrite a plain mapping ``key -> (SQL function, model)``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from sqlglot import exp

from scoring.errors import ModelNotFoundError, PredictSyntaxError, did_you_mean
from scoring.sql.dialects import Node, PredictTable
from scoring.sql.qualify import NAME_META

WRITTEN_META = "scoring_written"  # meta key: a MODEL expression as the user wrote it
_FABRIC = re.compile(r"^(?P<name>[\w.-]+)(?:/(?P<version>[\w.-]+)|@(?P<alias>[\w.-]+))$")


@dataclass(frozen=True)
class Reference:
    """One model a statement names.

    Attributes:
        kind: ``bound``, ``uri`` or ``table``.
        value: the bound name, the URI, or the model-table query's SQL.
        written: the reference as the user wrote it (for messages and the manifest).
        table: for ``table``: the model table's name as written.
    """

    kind: Literal["bound", "uri", "table"]
    value: str
    written: str
    table: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    def function_name(self) -> str:
        """The SQL function a non-bound model is registered as: readable and unique per reference."""
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:10]
        slug = re.sub(r"\W", "_", self.written if self.kind == "uri" else self.table)[:40]
        return f"__scoring_{slug}_{digest}"


def _bound(parts: tuple[str, ...], bound: dict[str, Any]) -> str | None:
    lowered = {name.lower(): name for name in bound}
    for candidate in (".".join(parts), parts[-1]):
        if candidate.lower() in lowered:
            return lowered[candidate.lower()]
    return None


def _not_bound(written: str, bound: dict[str, Any]) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model '{written}' is not bound; bind it with --model {written}=URI or name a registry URI"
        + did_you_mean(written, list(bound))
    )


def of_name(text: str, bound: dict[str, Any]) -> Reference:
    """The reference for a model written as a string or name."""
    found = _bound(tuple(text.split(".")) if ":" not in text and "/" not in text else (text,), bound)
    if found is not None:
        return Reference("bound", found, text)
    if ":" in text or text.endswith(".onnx"):
        return Reference("uri", text, text)
    match = _FABRIC.match(text)
    if match:
        uri = (
            f"models:/{match['name']}/{match['version']}"
            if match["version"]
            else f"models:/{match['name']}@{match['alias']}"
        )
        return Reference("uri", uri, text)
    raise _not_bound(text, bound)


def of_model_expression(model: Node, bound: dict[str, Any], dialect: Any) -> Reference:
    """The reference for a PREDICT's MODEL expression (variables already substituted)."""
    if isinstance(model, exp.Literal) and model.is_string:
        return of_name(str(model.this), bound)
    if isinstance(model, exp.Subquery):
        tables = list(model.find_all(exp.Table))
        written = tables[0].meta.get(NAME_META, tables[0].name) if tables else "(query)"
        text = model.meta.get(WRITTEN_META) or model.sql()
        return Reference("table", model.this.sql(dialect=dialect), text, table=written)
    if isinstance(model, exp.Table | exp.Column | exp.Identifier | exp.Dot):
        parts = tuple(p.name for p in model.parts) if hasattr(model, "parts") else (model.name,)
        found = _bound(parts, bound)
        if found is None:
            raise _not_bound(".".join(parts), bound)
        return Reference("bound", found, ".".join(parts))
    if isinstance(model, exp.Parameter):
        raise PredictSyntaxError(f"PREDICT MODEL = {model.sql()}: the variable is not declared before this statement")
    raise PredictSyntaxError(
        f"PREDICT MODEL must be a name, a string, a @variable or a (subquery), found {model.sql()}"
    )


def is_scalar_predict(node: Node) -> bool:
    """Fabric's ``PREDICT('name/version', col, ...)``: a plain call named PREDICT."""
    return isinstance(node, exp.Anonymous) and node.name.upper() == "PREDICT"


def model_of(node: Node) -> Node:
    """The MODEL expression of any PREDICT form."""
    if isinstance(node, PredictTable):
        return node.this
    if isinstance(node, exp.Predict):
        return node.this
    if is_scalar_predict(node):
        if not node.expressions:
            raise PredictSyntaxError("PREDICT(...) needs the model as its first argument")
        return node.expressions[0]
    raise TypeError(node)


def predict_nodes(tree: Node) -> list[Node]:
    """Every PREDICT form of ``tree``: T-SQL, BigQuery ML.PREDICT and Fabric's scalar call."""
    return [
        node
        for node in tree.find_all(PredictTable, exp.Predict, exp.Anonymous)
        if not isinstance(node, exp.Anonymous) or is_scalar_predict(node)
    ]


def collect(tree: Node, bound: dict[str, Any], dialect: Any) -> list[Reference]:
    """Every model reference of ``tree``, in order of appearance, each once."""
    found: dict[str, Reference] = {}
    for node in predict_nodes(tree):
        ref = of_model_expression(model_of(node), bound, dialect)
        found.setdefault(ref.key, ref)
    return list(found.values())
