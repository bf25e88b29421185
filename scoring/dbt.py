"""dbt-duckdb plugin: registered models as SQL functions inside dbt models.

``profiles.yml``::

    outputs:
      dev:
        type: duckdb
        path: warehouse.duckdb
        plugins:
          - module: scoring.dbt
            config:
              models: {churn: "models:/churn/1"}
              tracking_uri: sqlite:///mlruns.db   # optional; else MLFLOW_TRACKING_URI

Every model is pinned once, when dbt loads the plugin, so all threads and
connections of one ``dbt run`` score with the same version.

Materialize the dbt models that call a model function as tables (``+materialized: table``
in ``dbt_project.yml``), not as views, dbt's default. DuckDB stores a view as its query and
runs that query each time the view is read, so a view that calls ``churn(...)`` can be read
only from a connection on which this plugin has registered ``churn``. Anyone else, such as a
BI tool or a colleague's ``duckdb warehouse.duckdb``, gets
``Scalar Function with name churn does not exist``. A table holds the scores themselves.

dbt-duckdb 1.11 gives a plugin no hook that sees a model's materialization: a plugin is
told about its configuration and each connection and cursor, about sources it loads and
``external`` models it stores, and nothing else. So the warning about views comes from the
database instead. When dbt opens the warehouse, the plugin lists the views already there that
call one of its model functions, and logs one warning for each. A view that a run creates
is therefore reported from the next dbt command on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import sqlglot
from dbt.adapters.duckdb.plugins import BasePlugin
from dbt.adapters.events.logging import AdapterLogger
from sqlglot import exp
from sqlglot.errors import SqlglotError

from scoring.api import attach, pin
from scoring.settings import load_settings

logger = AdapterLogger("scoring")


def views_calling(conn: Any, functions: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    """``(qualified view name, model functions it calls)`` for each view in the database that
    calls one of ``functions``. The view's SQL is parsed, not searched as text."""
    wanted = {f.lower() for f in functions}
    rows = conn.execute(
        "SELECT database_name, schema_name, view_name, sql FROM duckdb_views() WHERE NOT internal"
    ).fetchall()
    for database, schema, view, sql in rows:
        if not sql or not any(f in sql.lower() for f in wanted):  # most views: no parse needed
            continue
        try:
            tree = sqlglot.parse_one(sql, read="duckdb")
        except SqlglotError:
            continue  # a view sqlglot cannot read is not ours to judge
        called = sorted({call.name for call in tree.find_all(exp.Anonymous) if call.name.lower() in wanted})
        if called:
            yield f"{database}.{schema}.{view}", called


class Plugin(BasePlugin):  # type: ignore[misc]  # dbt-duckdb has no type stubs
    """Registers the configured models on every DuckDB connection dbt opens, and warns about
    views in the warehouse that call them."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        config = dict(plugin_config)
        models = config.pop("models", None) or {}
        if not isinstance(models, dict) or not models:
            from scoring.errors import ConfigError

            raise ConfigError("scoring.dbt plugin: config 'models' must map SQL names to model URIs")
        self.settings = load_settings(**config)
        self.pinned = pin(models, self.settings)
        self.views_checked = False

    def configure_connection(self, conn: Any) -> None:
        attach(conn, self.pinned, self.settings)
        if not self.views_checked:  # once per dbt command: the first connection sees the warehouse
            self.views_checked = True
            for view, called in views_calling(conn, self.pinned):
                logger.warning(
                    f"scoring.dbt: view {view} calls the model function {', '.join(called)}: it can be read "
                    "only from a connection with this plugin (elsewhere: 'Scalar Function with name "
                    f"{called[0]} does not exist'); materialize it as a table (+materialized: table)"
                )
