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
"""

from __future__ import annotations

from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin

from scoring.api import attach, pin
from scoring.settings import load_settings


class Plugin(BasePlugin):  # type: ignore[misc]  # dbt-duckdb has no type stubs
    """Registers the configured models on every DuckDB connection dbt opens."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        config = dict(plugin_config)
        models = config.pop("models", None) or {}
        if not isinstance(models, dict) or not models:
            from scoring.errors import ConfigError

            raise ConfigError("scoring.dbt plugin: config 'models' must map SQL names to model URIs")
        self.settings = load_settings(**config)
        self.pinned = pin(models, self.settings)

    def configure_connection(self, conn: Any) -> None:
        attach(conn, self.pinned, self.settings)
