"""Atomic Parquet output with run metadata.

A result is first written to a hidden temporary file beside the target, flushed to
disk, then renamed over the target in one step. A job killed at any moment leaves
under the target path either the previous complete result or the new complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scoring.errors import OutputError

METADATA_KEY = "scoring"


@dataclass(frozen=True)
class WriteResult:
    """What was published."""

    path: Path
    rows: int
    row_groups: int


def check_target(path: Path, mode: str, *, folder: bool = False) -> None:
    """Fail early, before any scoring, if the result cannot be published at ``path``."""
    if mode == "error" and path.exists():
        raise OutputError(f"output '{path}' already exists and the write mode is 'error'")
    if path.is_dir() and not folder:
        raise OutputError(f"output '{path}' is a folder; expected the path of a Parquet file")
    if path.is_file() and folder:
        raise OutputError(f"output '{path}' is a file; expected the path of a folder")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output folder '{parent}' cannot be created: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder '{parent}' is not writable")


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: text and binary. Scores and features are floats, for
    which pyarrow's default (a dictionary for every column) costs ~4x the write time for nothing."""
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
        or pa.types.is_binary(f.type)
        or pa.types.is_dictionary(f.type)
    ]


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A hidden temporary path next to ``path``, removed unless it was renamed away."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_parquet(
    batches: pa.RecordBatchReader,
    path: Path,
    metadata: dict[str, Any],
    *,
    mode: str = "overwrite",
    compression: str = "zstd",
    on_batch: Callable[[int], None] | None = None,
) -> WriteResult:
    """Stream ``batches`` into a Parquet file published atomically at ``path``.

    Each incoming batch becomes one row group. ``metadata`` is stored as JSON under the
    key ``scoring`` in the file's key-value metadata, with ``rows`` added at the end.
    """
    path = Path(path)
    check_target(path, mode)
    rows = groups = 0
    with temporary_beside(path) as tmp:
        try:
            writer = pq.ParquetWriter(
                tmp, batches.schema, compression=compression, use_dictionary=_dictionary_columns(batches.schema)
            )
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"output '{path}': cannot write Parquet: {exc}") from None
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                try:
                    writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))
                except OSError as exc:  # a full or failing disk: the job's output, not a bug
                    raise _write_error(path, exc) from None
                rows += batch.num_rows
                groups += 1
                if on_batch is not None:
                    on_batch(batch.num_rows)
            writer.add_key_value_metadata({METADATA_KEY: json.dumps({**metadata, "rows": rows})})
        finally:
            try:
                writer.close()
            except OSError as exc:
                raise _write_error(path, exc) from None
        try:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _write_error(path, exc) from None
        if mode == "error" and path.exists():
            raise OutputError(f"output '{path}' appeared while the job ran and the write mode is 'error'")
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"output '{path}' cannot be replaced: {exc.strerror}") from None
    _fsync_dir(path.parent)
    return WriteResult(path, rows, groups)


def _write_error(path: Path, exc: OSError) -> OutputError:
    lines = str(exc).strip().splitlines()
    reason = exc.strerror or (lines[0] if lines else type(exc).__name__)
    return OutputError(f"output '{path}': cannot write Parquet: {reason}")


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON at ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_beside(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_metadata(path: Path) -> dict[str, Any]:
    """The run metadata stored in a result file by :func:`write_parquet`."""
    meta = pq.read_metadata(path).metadata or {}
    raw = meta.get(METADATA_KEY.encode())
    return json.loads(raw) if raw else {}
