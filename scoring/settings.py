"""Configuration: one pydantic-settings class, read from ``SCORING_*`` variables.

MLflow's own ``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI`` are honoured so the
tool drops into an environment already configured for MLflow. The field
descriptions feed the CLI help and the README's settings table (a test checks
that every field is documented there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring.errors import ConfigError

NullPolicy = Literal["null", "nan", "error"]
WriteMode = Literal["overwrite", "error"]
# Codecs both engines write without extra libraries (Spark needs a plug-in for brotli).
Compression = Literal["zstd", "snappy", "gzip", "lz4", "none"]


class Settings(BaseSettings):
    """Every setting of a scoring job; see the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="SCORING_", extra="forbid", populate_by_name=True)

    home: Path = Field(
        Path(".scoring"),
        description="Folder for the embedded registry (sqlite + artifacts) and the model cache.",
    )
    tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("SCORING_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking URI (also read from MLFLOW_TRACKING_URI); default: sqlite:///<home>/mlflow.db.",
    )
    registry_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("SCORING_REGISTRY_URI", "MLFLOW_REGISTRY_URI"),
        description="MLflow model registry URI (also MLFLOW_REGISTRY_URI); default: the tracking URI.",
    )
    cache_dir: Path | None = Field(None, description="Content-addressed model cache; default: <home>/models.")
    engine: Literal["duckdb", "spark"] = Field("duckdb", description="Engine that runs the query.")
    dialect: str | None = Field(None, description="SQL dialect the query is written in; default: the engine's own.")
    null: NullPolicy = Field(
        "null",
        description="NULL in a model input: 'null' (row's outputs are NULL), 'nan' "
        "(NaN for float inputs), 'error' (fail naming the column).",
    )
    mode: WriteMode = Field("overwrite", description="'overwrite' replaces an existing result; 'error' refuses.")
    threads: int | None = Field(None, ge=1, description="Engine threads (DuckDB); default: all cores.")
    ort_threads: int | None = Field(
        None,
        ge=1,
        description="onnxruntime intra-op threads per session; default: derived from cores and engine threads.",
    )
    row_group_rows: int = Field(
        131072, ge=1024, description="Rows per Parquet row group in the output (at least 1024)."
    )
    batch_scoring: Literal["auto", "off"] = Field(
        "auto",
        description="DuckDB: 'auto' scores a projection of one table in whole row-group batches instead of "
        "one UDF call per 2,048-row vector (same result; the manifest's scoring_path says which ran); "
        "'off' always uses the UDF.",
    )
    compression: Compression = Field(
        "zstd", description="Parquet compression codec of the output: zstd, snappy, gzip, lz4 or none."
    )
    registry_timeout: int = Field(30, ge=1, description="Seconds before an HTTP request to the registry times out.")
    registry_retries: int = Field(2, ge=0, description="Retries of a failed HTTP request to the registry.")
    spark_master: str = Field("local[2]", description="Spark master URL for --engine spark.")
    host_access: bool = Field(
        False,
        description="Let the job's SQL reach the host: DuckDB file functions, COPY and ATTACH, Spark "
        "path tables and java_method. Only for trusted SQL (README: Security).",
    )
    model_max_bytes: int = Field(
        4 << 30, ge=1, description="Largest model file (ONNX plus external data) accepted, in bytes."
    )
    spark_remote: str | None = Field(
        None,
        description="Spark Connect URL (sc://host:port) for --engine spark: run on that server instead of "
        "starting Spark; rows scored are not counted there.",
    )
    spark_udf: Literal["auto", "arrow", "pandas"] = Field(
        "auto",
        description="Spark UDF kind of the models: 'auto' (Arrow UDF where pyspark has arrow_udf, 4.1+; "
        "else iterator pandas UDF), 'arrow' or 'pandas'.",
    )
    progress: Literal["auto", "off"] = Field(
        "auto",
        description="Spark progress on stderr: 'auto' logs each stage (session start, tables, model shipping, the "
        "write with its task and row counts): one line updated in place on a terminal, a line per stage and "
        "every 10 s elsewhere, JSON events with JSON logs; 'off' logs none.",
    )
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or JSON.")
    debug: bool = Field(False, description="Show tracebacks on errors.")

    @field_validator("compression", mode="before")
    @classmethod
    def _codec_name(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # ZSTD as zstd, as pyarrow reads it

    def resolved_tracking_uri(self) -> str:
        """The tracking URI in force: explicit, or the embedded sqlite registry under ``home``."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def resolved_cache_dir(self) -> Path:
        """The model cache folder in force."""
        return (self.cache_dir or self.home / "models").resolve()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, then apply non-None ``overrides``.

    Raises:
        ConfigError: naming the first invalid field.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"setting '{field}': {first['msg']} (got {first.get('input')!r})") from None


def settings_markdown() -> str:
    """The README's settings table, generated from the field descriptions."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default if field.default is not None else ""
        lines.append(f"| `SCORING_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(lines)
