"""Qualification passes: table names as users write them, and the columns around a PREDICT.

:func:`resolve_tables` maps every table name of a statement to the engine's name for it.
Resolution order (documented in the README): a CTE of the statement, then an object an
earlier statement of the script created (view, temp table), then a bound table under its
full qualified name, else under its last part. ``dbo.mytable``, ``[dbo].[t]``,
`` `project.dataset.table` `` and ``"schema"."t"`` all resolve that way.

:func:`qualify_columns` runs after the PREDICT forms were expanded: in each SELECT that
reads a T-SQL PREDICT it qualifies bare column names (an output first, then a DATA column),
expands ``*`` source by source (DATA columns, then WITH columns, then the other tables'
columns, in FROM order) and names a misspelt ``d.col`` / ``p.col`` with the closest name.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from scoring.errors import ConfigError, InputDataError, QueryError, did_you_mean
from scoring.sql.dialects import Node

PREDICT_META = "scoring_predict"  # meta key on an expanded T-SQL PREDICT subquery
NAME_META = "scoring_name"  # meta key: a table's name as the user wrote it

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def binding_parts(name: str, what: str = "table") -> tuple[str, ...]:
    """``'dbo.mytable'`` -> ``('dbo', 'mytable')``: a binding name of dotted plain identifiers.

    Raises:
        ConfigError: a part is not a plain SQL identifier.
    """
    parts = tuple(name.split("."))
    if not 1 <= len(parts) <= 3 or not all(_PART.match(p) for p in parts):
        raise ConfigError(
            f"{what} name '{name}' is not a plain SQL identifier (letters, digits, underscore; "
            "dotted parts such as dbo.mytable are allowed)"
        )
    return parts


def engine_name(parts: tuple[str, ...]) -> str:
    """The single identifier an engine registers a (possibly qualified) name under."""
    return parts[0] if len(parts) == 1 else "__".join(parts)


@dataclass
class Names:
    """The table names a statement may use.

    Attributes:
        bound: lowered name parts of each bound table -> its engine name.
        created: lowered name parts of each view / temp table made by an earlier statement.
    """

    bound: dict[tuple[str, ...], str] = field(default_factory=dict)
    created: dict[tuple[str, ...], str] = field(default_factory=dict)
    # Unique per job: a shared Spark session keeps temp views across jobs.
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @classmethod
    def of_bindings(cls, tables: dict[str, str]) -> Names:
        """Names for ``--table NAME=PATH`` bindings (``NAME`` may be qualified)."""
        names = cls()
        for name in tables:
            parts = binding_parts(name)
            key = tuple(p.lower() for p in parts)
            if key in names.bound:
                raise ConfigError(f"table '{name}' is bound twice (SQL names ignore case)")
            names.bound[key] = engine_name(parts)
        return names

    def create(self, parts: tuple[str, ...], temporary: bool) -> str:
        """Record an object a script statement creates; return its engine name."""
        key = tuple(p.lower() for p in parts)
        kind = "tmp" if temporary else "view"
        name = f"__scoring_{kind}_{self.token}_" + "__".join(key)
        self.created[key] = name
        return name

    def lookup(self, parts: tuple[str, ...]) -> str | None:
        """Engine name for a table written as ``parts``, by the resolution order above."""
        key = tuple(p.lower() for p in parts)
        for scope in (self.created, self.bound):
            if key in scope:
                return scope[key]
            by_last = [name for k, name in scope.items() if k[-1] == key[-1] and len(k) == 1]
            if len(key) > 1 and by_last:
                return by_last[0]
        return None

    def known(self) -> list[str]:
        return sorted(".".join(k) for k in (*self.created, *self.bound))


def table_parts(table: exp.Table) -> tuple[str, ...]:
    """Name parts of a table as written: ``[catalog,] [db,] name``."""
    return tuple(part for part in (table.catalog, table.db, table.name) if part)


def _cte_names(tree: Node) -> set[str]:
    return {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}


def _is_model_name(table: exp.Table) -> bool:
    """``MODEL `project.dataset.m``` of ML.PREDICT is a model, not a table."""
    parent = table.parent
    return isinstance(parent, exp.Predict) and parent.this is table


def resolve_tables(tree: Node, names: Names, skip: set[int] | None = None) -> Node:
    """Point every table of ``tree`` at its engine name; fail naming the closest bound names.

    A table whose engine name differs from what the user wrote keeps that name as its
    alias, so ``dbo.mytable.id`` and ``mytable.id`` still qualify its columns.
    """
    ctes = _cte_names(tree)
    for table in list(tree.find_all(exp.Table)):
        if skip and id(table) in skip:
            continue
        if not isinstance(table.this, exp.Identifier) or _is_model_name(table):
            continue  # a table function (range(3), read_parquet(...)) or a model name
        parts = table_parts(table)
        if len(parts) == 1 and parts[0].lower() in ctes:
            continue
        target = names.lookup(parts)
        if target is None:
            written = ".".join(parts)
            raise InputDataError(
                f"table '{written}' is not bound; bind it with --table {written}=PATH"
                + did_you_mean(written, names.known())
            )
        table.meta[NAME_META] = ".".join(parts)
        if target != parts[-1] or len(parts) > 1:
            if not table.alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(parts[-1])))
            table.set("this", exp.to_identifier(target, quoted=True))
            table.set("db", None)
            table.set("catalog", None)
    for column in tree.find_all(exp.Column):
        if column.args.get("db") is not None:  # dbo.mytable.id -> mytable.id
            column.set("db", None)
            column.set("catalog", None)
    return tree


# -- columns around an expanded T-SQL PREDICT -----------------------------------------------------


@dataclass(frozen=True)
class PredictShape:
    """What the enclosing SELECT needs to know about one expanded T-SQL PREDICT."""

    data_alias: str
    result_alias: str
    data_columns: tuple[str, ...]
    outputs: tuple[str, ...]
    data_name: str


def _sources(select: exp.Select) -> list[Any]:
    from_ = select.args.get("from") or select.args.get("from_")
    sources = [from_.this] if from_ is not None else []
    return sources + [join.this for join in select.args.get("joins") or []]


def _check(column: exp.Column, alias: str, names: tuple[str, ...], what: str) -> None:
    if column.table.lower() != alias.lower() or column.name.lower() in {n.lower() for n in names}:
        return
    raise QueryError(f"column '{column.name}' is not in {what}" + did_you_mean(column.name, list(names)))


def _star(table: str) -> exp.Column:
    return exp.Column(this=exp.Star(), table=exp.to_identifier(table))


def qualify_columns(tree: Node) -> Node:
    """Qualify bare columns and expand ``*`` in every SELECT that reads a T-SQL PREDICT."""
    for select in list(tree.find_all(exp.Select)):
        sources = _sources(select)
        shapes = [s.meta[PREDICT_META] for s in sources if isinstance(s, exp.Subquery) and PREDICT_META in s.meta]
        if not shapes:
            continue
        for column in list(select.find_all(exp.Column)):
            if column.find_ancestor(exp.Select) is not select or isinstance(column.this, exp.Star):
                continue
            for shape in shapes:
                if column.table:
                    _check(
                        column,
                        shape.data_alias,
                        shape.data_columns,
                        f"DATA '{shape.data_name}' (alias {shape.data_alias})",
                    )
                    _check(
                        column,
                        shape.result_alias,
                        shape.outputs,
                        f"the PREDICT result (alias {shape.result_alias}: the outputs declared in WITH)",
                    )
                    continue
                name = column.name.lower()
                if name in {o.lower() for o in shape.outputs}:
                    column.set("table", exp.to_identifier(shape.result_alias))
                    break
                if name in {c.lower() for c in shape.data_columns}:
                    column.set("table", exp.to_identifier(shape.data_alias))
                    break
        if any(isinstance(p, exp.Star) for p in select.expressions):
            stars: list[Any] = []
            for source in sources:
                shape = source.meta.get(PREDICT_META) if isinstance(source, exp.Subquery) else None
                if shape is not None:
                    stars += [_star(shape.data_alias), _star(shape.result_alias)]
                else:
                    stars.append(_star(source.alias_or_name))
            expanded: list[Any] = []
            for projection in select.expressions:
                expanded += stars if isinstance(projection, exp.Star) else [projection]
            select.set("expressions", expanded)
    return tree


def deduplicated(names: list[str]) -> list[str] | None:
    """Names for a result whose columns repeat a name: later ones become ``id_1``, ``id_2``, ...

    Returns None when every name is unique already (case-insensitively, as SQL and Parquet
    readers compare them). A suffix already taken by another column is skipped.
    """
    lowered = [n.lower() for n in names]
    if len(set(lowered)) == len(lowered):
        return None
    taken = set(lowered)
    seen: set[str] = set()
    result = []
    for name in names:
        if name.lower() not in seen:
            seen.add(name.lower())
            result.append(name)
            continue
        k = 1
        while f"{name}_{k}".lower() in taken:
            k += 1
        taken.add(f"{name}_{k}".lower())
        result.append(f"{name}_{k}")
    return result
