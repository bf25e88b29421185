"""The job file of ``scoring run --job job.toml``, and its ``SCORING_*`` overrides.

A job file is TOML::

    engine = "duckdb"                 # optional, as --engine
    dialect = "tsql"                  # optional, as --dialect
    null = "null"                     # optional, as --null
    sql = "score.sql"                 # a file, relative to the job file; or: query = "SELECT ..."

    [models]                          # SQL name -> registry URI, as --model
    bc = "models:/bc@champion"

    [tables]                          # SQL name -> Parquet file, folder or glob, as --table
    patients = "/data/in/patients.parquet"

    [output]
    path = "/data/out/scored.parquet" # as --output
    compression = "zstd"              # optional, as SCORING_COMPRESSION
    mode = "overwrite"                # optional, as --mode

Each value can come from three layers; the higher one wins, key by key (a ``--model``
flag replaces one model of the file and keeps the others):

1. command-line flags;
2. ``SCORING_*`` environment variables, so that a scheduler can configure an image
   without writing a file: ``SCORING_MODELS`` / ``SCORING_TABLES`` (JSON, or
   ``a=models:/a/1,b=models:/b@x``), ``SCORING_QUERY``, ``SCORING_SQL``, ``SCORING_OUTPUT``
   (a path, or a JSON object), ``SCORING_OUTPUT__PATH``, ``SCORING_OUTPUT__MODE``, ...;
3. the job file.

``engine``, ``dialect``, ``null``, ``output.mode`` and ``output.compression`` are
:class:`~scoring.settings.Settings` fields: the file only supplies defaults for them, so
their own variables (``SCORING_ENGINE``, ``SCORING_MODE``, ...) and flags outrank it, and
Settings validates them. A layer that gives ``query`` or ``sql`` replaces both below it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

from scoring.errors import ConfigError, did_you_mean
from scoring.job import JobSpec
from scoring.settings import NullPolicy, Settings, WriteMode

_OUTPUT_FIELD = "SCORING_OUTPUT__"

# The same choices as Settings.engine (tests/test_jobfile.py checks they stay equal).
EngineName = Literal["duckdb", "spark"]


class OutputSpec(BaseModel):
    """The ``[output]`` table."""

    model_config = ConfigDict(extra="forbid")

    path: str  # a path or a URI: Path() would fold s3:// and hdfs:// into s3:/ and hdfs:/
    compression: str | None = None
    mode: WriteMode | None = None
    partition_by: list[str] | None = None


class JobFile(BaseModel):
    """A job file as written, after the environment and flags are merged in."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineName | None = None
    dialect: str | None = None
    null: NullPolicy | None = None
    host_access: bool | None = None
    models: dict[str, str] = Field(default_factory=dict)
    tables: dict[str, str] = Field(default_factory=dict)
    query: str | None = None
    sql: Path | None = None
    output: OutputSpec


class _OutputOverride(BaseModel):
    """``SCORING_OUTPUT``: every field optional, merged over the file's ``[output]``."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    compression: str | None = None
    mode: WriteMode | None = None
    partition_by: list[str] | None = None

    @field_validator("partition_by", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # SCORING_OUTPUT__PARTITION_BY=a,b reads like the other list variables.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return json.loads(value) if isinstance(value, str) else value


class _OutputFields(BaseModel):
    """The ``SCORING_OUTPUT__*`` variables, validated under the name ``output``."""

    output: _OutputOverride


def _name_map(value: Any) -> Any:
    """``{"a": "x"}`` as JSON, or ``a=x,b=y``: how a variable binds SQL names."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("{"):
        return json.loads(value)
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"expected NAME=VALUE pairs separated by commas, got '{item}'")
        pairs[name.strip()] = target.strip()
    return pairs


class JobEnv(BaseSettings):
    """The job's own ``SCORING_*`` variables (engine-level ones belong to Settings)."""

    # NoDecode: the validators below parse the text, so `a=x,b=y` and a plain path work.
    model_config = SettingsConfigDict(env_prefix="SCORING_", env_nested_delimiter="__", extra="ignore")

    models: Annotated[dict[str, str] | None, NoDecode] = None
    tables: Annotated[dict[str, str] | None, NoDecode] = None
    query: str | None = None
    sql: Path | None = None
    output: Annotated[_OutputOverride | None, NoDecode] = None

    @field_validator("models", "tables", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        return _name_map(value)

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.lstrip().startswith("{") else {"path": value}
        return value


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "job"


def _first_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """``field 'output.path': Field required``, with a suggestion for a misspelt key."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    # "Value error, " is pydantic's wrapping of our own ValueErrors: noise on one line.
    message = f"field '{_field(loc)}': {error['msg'].removeprefix('Value error, ')}"
    if error["type"] == "extra_forbidden":
        fields = OutputSpec.model_fields if loc[:1] == ("output",) and len(loc) > 1 else model.model_fields
        message += did_you_mean(str(loc[-1]), fields)
    return message


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"job file {path}: cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path}: invalid TOML: {exc}") from None
    # A relative `sql` belongs to the file, wherever the job runs from.
    sql = data.get("sql")
    if isinstance(sql, str) and not Path(sql).is_absolute():
        data["sql"] = str(path.parent / sql)
    return data


def _read_env() -> dict[str, Any]:
    try:
        data = JobEnv().model_dump(exclude_none=True)
    except ValidationError as exc:
        variable = f"SCORING_{str(exc.errors()[0]['loc'][0]).upper()}"
        raise ConfigError(f"environment {variable}: {_first_error(exc, JobEnv)}") from None
    except (SettingsError, ValueError) as exc:
        raise ConfigError(f"environment: {exc}") from None
    # pydantic-settings drops SCORING_OUTPUT__* once SCORING_OUTPUT itself is set; a field
    # variable is the more specific of the two, so it is read here and wins.
    fields = {
        name.upper().removeprefix(_OUTPUT_FIELD).lower(): value
        for name, value in os.environ.items()
        if name.upper().startswith(_OUTPUT_FIELD)
    }
    if fields:
        try:
            output = _OutputFields.model_validate({"output": fields}).output.model_dump(exclude_none=True)
        except ValidationError as exc:
            variable = f"{_OUTPUT_FIELD}{str(exc.errors()[0]['loc'][-1]).upper()}"
            raise ConfigError(f"environment {variable}: {_first_error(exc, _OutputFields)}") from None
        data["output"] = {**data.get("output", {}), **output}
    return data


def job_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``SCORING_*`` variables set in ``environ`` that describe a job (models, query, ...)."""
    names = {f"SCORING_{name.upper()}" for name in JobEnv.model_fields}
    return sorted(n for n in environ if n.upper() in names or n.upper().startswith(_OUTPUT_FIELD))


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base``, tables merged key by key; query and sql replace each other."""
    merged = dict(base)
    if "query" in layer or "sql" in layer:
        merged.pop("query", None)
        merged.pop("sql", None)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_by_environment() -> set[str]:
    """Settings fields that ``SCORING_*`` (or ``MLFLOW_*``) variables set: they outrank the file."""
    try:
        return set(Settings().model_fields_set)  # type: ignore[call-arg]
    except ValidationError:
        # A bad variable: give the file nothing to hide it with, so load_settings reports it.
        return set(Settings.model_fields)


def known_variables() -> set[str]:
    """Every ``SCORING_*`` variable the settings and the job read."""
    names = {f"SCORING_{name.upper()}" for name in (*Settings.model_fields, *JobEnv.model_fields)}
    return names | {f"{_OUTPUT_FIELD}{name.upper()}" for name in OutputSpec.model_fields}


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a ``SCORING_*`` variable that nothing reads: a misspelt setting must not be ignored.

    Raises:
        ConfigError: naming the variable, with the closest known name.
    """
    known = known_variables()
    for name in sorted(environ):
        if name.upper().startswith("SCORING_") and name.upper() not in known:
            raise ConfigError(f"environment {name}: not a scoring setting{did_you_mean(name, sorted(known))}")


def load_job(path: Path | None, flags: Mapping[str, Any] | None = None) -> tuple[JobSpec, dict[str, Any]]:
    """The job described by ``path`` (None: no file), the environment and ``flags``.

    ``flags`` has the file's shape (``{"models": {...}, "query": ..., "output": {"path": ...}}``)
    and wins over both. Returns the job and the settings it supplies (engine, dialect, null,
    mode, compression) minus those the environment sets: pass them to
    :func:`scoring.settings.load_settings` under the command line's own settings.

    Raises:
        ConfigError: one line naming the file (or variable) and the field.
    """
    label = f"job file {path}" if path is not None else "job"
    merged: dict[str, Any] = {}
    for layer in (_read_file(path) if path is not None else {}, _read_env(), dict(flags or {})):
        merged = _merge(merged, layer)
    try:
        job = JobFile.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"{label}: {_first_error(exc, JobFile)}") from None

    if job.query is not None and job.sql is not None:
        raise ConfigError(f"{label}: fields 'query' and 'sql': give one of them, not both")
    if job.query is None and job.sql is None:
        raise ConfigError(f"{label}: field 'query': Field required (or 'sql', a file holding the query)")
    if job.output.partition_by:
        # Said plainly rather than ignored: the writer publishes a single file or folder.
        raise ConfigError(f"{label}: field 'output.partition_by': partitioned output is not supported yet")
    query = job.query
    if job.sql is not None:
        try:
            query = job.sql.read_text()
        except OSError as exc:
            raise ConfigError(f"{label}: field 'sql': file '{job.sql}' cannot be read: {exc.strerror}") from None
    assert query is not None

    supplied = {
        "engine": job.engine,
        "dialect": job.dialect,
        "null": job.null,
        "host_access": job.host_access,
        "mode": job.output.mode,
        "compression": job.output.compression,
    }
    from_env = _set_by_environment()
    overrides = {k: v for k, v in supplied.items() if v is not None and k not in from_env}
    spec = JobSpec(models=job.models, tables=job.tables, query=query, output=job.output.path)
    return spec, overrides
