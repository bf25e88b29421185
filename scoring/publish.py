"""One publisher: Parquet files and folders, local or on an object store, and the run manifests.

What a reader of the output can see (the README's "Storage" section says the same):

- **A file, local:** written to a hidden temporary file beside the target, flushed, renamed over
  it. Readers see the previous complete file or the new complete one.
- **A file on an object store (S3, GCS, Azure):** streamed to a hidden temporary key beside the
  target, then copied onto the target server-side (S3 ``CopyObject``, GCS rewrite, Azure copy) and
  the temporary key deleted. A copy creates the target object in one step: readers see the previous
  object or the new one. A killed job leaves at most a hidden ``.NAME.tmp-*`` key or an
  unfinished multipart upload under it, which the next run for the same output removes.
- **A folder (Spark):** the engine writes into a hidden temporary folder handed to it. Where the
  store renames atomically (local disk, ``file://``, ``hdfs://``) the folder, with its manifest
  ``_scoring.json`` inside, replaces the previous one by rename (on Linux one ``renameat2`` swap).
  Elsewhere (S3, GCS, Azure blob) the **commit protocol** applies: ``_scoring.json`` is first
  overwritten with ``{"status": "publishing"}``, the previous files are removed, the new ones moved in,
  and the committed manifest (``"status": "committed"`` and the list of its ``files``) is written
  last, as one object. A reader that honours it (``scoring`` itself does) reads exactly the listed
  files of a committed folder and refuses one that is publishing; a plain reader can see a partial
  folder during a replacement.

Temporaries are named ``.NAME.tmp-<random>-<pid>@<host>``: a later run removes those whose process
on this host is gone (or that are more than a day old on an object store), and never touches others.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scoring import storage
from scoring.errors import OutputError, ScoringError
from scoring.storage import Location

log = logging.getLogger(__name__)

METADATA_KEY = "scoring"
MANIFEST = storage.MANIFEST
_STALE_SECONDS = 24 * 3600  # a temporary of another host is stale after a day


@dataclass(frozen=True)
class WriteResult:
    """What was published."""

    uri: str
    rows: int
    row_groups: int


# -- temporaries --------------------------------------------------------------------------------


def temporary_name(name: str) -> str:
    """A hidden temporary name beside ``name`` that says which process owns it."""
    return f".{name}.tmp-{uuid.uuid4().hex[:12]}-{os.getpid()}@{socket.gethostname()}"


def _owner(name: str, target: str) -> tuple[int, str] | None:
    match = re.fullmatch(rf"\.{re.escape(target)}\.tmp-[0-9a-f]{{12}}-(\d+)@(.+)", name)
    return (int(match[1]), match[2]) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _stale(name: str, target: str, age: float | None) -> bool:
    owner = _owner(name, target)
    if owner is None:
        return False  # not ours: never touched
    pid, host = owner
    if host == socket.gethostname():
        return not _alive(pid)
    return age is not None and age > _STALE_SECONDS


def remove_stale(location: Location) -> None:
    """Remove temporaries of a publish to ``location`` whose owner is gone (best effort).

    On S3 this includes multipart uploads left unfinished under them by a killed job (pyarrow
    cannot list those; boto3 can, where it is installed).
    """
    parent = location.sibling("x").path.rsplit("/", 1)[0] if "/" in location.path else ""
    target = location.name
    try:
        infos = location.fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return
    now = time.time()
    for info in infos:
        age = now - info.mtime.timestamp() if info.mtime is not None else None
        if _stale(info.base_name, target, age):
            log.info("removing stale temporary %s", storage.redact(info.path))
            with contextlib.suppress(OSError):
                if info.type == pafs.FileType.Directory:
                    location.fs.delete_dir(info.path)
                else:
                    location.fs.delete_file(info.path)
    if isinstance(location.fs, pafs.S3FileSystem):
        _abort_stale_uploads(location, parent, target)


def _abort_stale_uploads(location: Location, parent: str, target: str) -> None:
    try:
        import boto3
    except ImportError:
        log.debug("boto3 is not installed: unfinished multipart uploads are left to the bucket's lifecycle rule")
        return
    bucket, _, folder = parent.partition("/")
    prefix = f"{folder}/.{target}.tmp-" if folder else f".{target}.tmp-"
    try:
        client = boto3.client("s3", region_name=getattr(location.fs, "region", None) or None)
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                age = time.time() - upload["Initiated"].timestamp()
                if _stale(upload["Key"].rsplit("/", 1)[-1], target, age):
                    log.info("aborting unfinished upload of s3://%s/%s", bucket, upload["Key"])
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    except Exception as exc:  # best effort: a lifecycle rule is the backstop
        log.debug("unfinished multipart uploads not listed: %s", storage.scrub(str(exc).splitlines()[0]))


# -- checks -------------------------------------------------------------------------------------


def check_target(output: str, mode: str, *, folder: bool = False) -> Location:
    """Fail early, before any scoring, if the result cannot be published at ``output``.

    Existence is asked of the store the output is on. Stale temporaries of earlier killed runs for
    the same output are removed here.
    """
    location = storage.locate(output)
    info = location.info()
    if mode == "error" and info.type != pafs.FileType.NotFound:
        raise OutputError(f"output '{location.display}' already exists and the write mode is 'error'")
    if info.type == pafs.FileType.Directory and not folder:
        raise OutputError(f"output '{location.display}' is a folder; expected the path of a Parquet file")
    if info.type == pafs.FileType.File and folder:
        raise OutputError(f"output '{location.display}' is a file; expected the path of a folder")
    if location.local:
        parent = os.path.dirname(location.path) or "."
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output folder '{parent}' cannot be created: {exc.strerror}") from None
        if not os.access(parent, os.W_OK):
            raise OutputError(f"output folder '{parent}' is not writable")
    remove_stale(location)
    return location


# -- files --------------------------------------------------------------------------------------


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
def _temporary(location: Location) -> Iterator[Location]:
    """A hidden temporary beside ``location``, removed unless it was renamed away."""
    tmp = location.sibling(temporary_name(location.name))
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.fs.delete_file(tmp.path)


def write_parquet(
    batches: pa.RecordBatchReader,
    output: str,
    metadata: dict[str, Any],
    *,
    mode: str = "overwrite",
    compression: str = "zstd",
    on_batch: Callable[[int], None] | None = None,
) -> WriteResult:
    """Stream ``batches`` into a Parquet file published atomically at ``output`` (a path or URI).

    Each incoming batch becomes one row group. ``metadata`` is stored as JSON under the
    key ``scoring`` in the file's key-value metadata, with ``rows`` added at the end.
    """
    output = str(output)
    location = check_target(output, mode)
    with _temporary(location) as tmp:
        if location.local:
            rows, groups = _write_file(batches, tmp.path, None, location, metadata, compression, on_batch)
            _fsync(tmp.path, location)
        else:
            try:
                stream = tmp.fs.open_output_stream(tmp.path)
            except OSError as exc:
                raise storage.store_error(exc, location, "cannot be written") from None
            # Closing a pyarrow stream completes its upload even on an error: what it held is a
            # hidden temporary, deleted on the way out, and never copied onto the target.
            with stream:
                rows, groups = _write_file(batches, None, stream, location, metadata, compression, on_batch)
        if mode == "error" and location.exists():
            raise OutputError(f"output '{location.display}' appeared while the job ran and the write mode is 'error'")
        try:
            if location.local:
                os.replace(tmp.path, location.path)
            else:
                location.fs.copy_file(tmp.path, location.path)  # server-side; the target appears whole
        except OSError as exc:
            raise storage.store_error(exc, location, "cannot be replaced") from None
    if location.local:
        _fsync_dir(os.path.dirname(location.path))
    return WriteResult(output, rows, groups)


def _write_file(
    batches: pa.RecordBatchReader,
    path: str | None,
    stream: Any,
    location: Location,
    metadata: dict[str, Any],
    compression: str,
    on_batch: Callable[[int], None] | None,
) -> tuple[int, int]:
    rows = groups = 0
    try:
        writer = pq.ParquetWriter(
            path if path is not None else stream,
            batches.schema,
            compression=compression,
            use_dictionary=_dictionary_columns(batches.schema),
        )
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"output '{location.display}': cannot write Parquet: {storage.scrub(str(exc))}") from None
    failure: BaseException | None = None
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            try:
                writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))
            except OSError as exc:  # a full or failing disk or store: the job's output, not a bug
                raise _write_error(location, exc) from None
            rows += batch.num_rows
            groups += 1
            if on_batch is not None:
                on_batch(batch.num_rows)
        writer.add_key_value_metadata({METADATA_KEY: json.dumps({**metadata, "rows": rows})})
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            writer.close()
        except OSError as exc:
            if failure is None:  # never hide the error that stopped the write
                raise _write_error(location, exc) from None
    return rows, groups


def _write_error(location: Location, exc: OSError) -> ScoringError:
    if not location.local:
        return storage.store_error(exc, location, "cannot write Parquet")
    lines = str(exc).strip().splitlines()
    reason = exc.strerror or (lines[0] if lines else type(exc).__name__)
    return OutputError(f"output '{location.display}': cannot write Parquet: {reason}")


def _fsync(path: str, location: Location) -> None:
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _write_error(location, exc) from None


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_metadata(uri: str) -> dict[str, Any]:
    """The run metadata stored in a result file by :func:`write_parquet` (or in a folder's manifest)."""
    location = storage.locate(str(uri))
    if location.info().type == pafs.FileType.Directory:
        return storage.read_manifest(location) or {}
    with location.fs.open_input_file(location.path) as fh:
        meta = pq.read_metadata(fh).metadata or {}
    raw = meta.get(METADATA_KEY.encode())
    return json.loads(raw) if raw else {}


# -- small objects: manifests -------------------------------------------------------------------


def write_json(uri: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON at ``uri``: locally by rename, on an object store as one PUT (atomic)."""
    location = storage.locate(str(uri))
    payload = json.dumps(data, indent=2, default=str).encode()
    if location.local:
        os.makedirs(os.path.dirname(location.path) or ".", exist_ok=True)
        with _temporary(location) as tmp:
            with open(tmp.path, "wb") as fh:
                fh.write(payload)
            os.replace(tmp.path, location.path)
        return
    with location.fs.open_output_stream(location.path) as stream:
        stream.write(payload)


def remove(uri: str) -> None:
    """Delete the file at ``uri`` if it is there."""
    location = storage.locate(str(uri))
    with contextlib.suppress(FileNotFoundError):
        location.fs.delete_file(location.path)


# -- folders ------------------------------------------------------------------------------------


class Folders(Protocol):
    """What :func:`publish_folder` needs of a store: the Hadoop FileSystem of a Spark session,
    or pyarrow's filesystems."""

    atomic_rename: bool

    def exists(self, uri: str) -> bool: ...
    def is_file(self, uri: str) -> bool: ...
    def rename(self, source: str, target: str) -> None: ...
    def delete(self, uri: str) -> None: ...
    def write_text(self, uri: str, text: str) -> None: ...
    def files(self, uri: str, everything: bool = False) -> list[str]: ...


def child(uri: str, name: str) -> str:
    """``uri`` joined with ``name`` (one slash between; a query string kept at the end)."""
    base, sep, query = uri.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def sibling(uri: str, name: str) -> str:
    """The path or URI ``name`` in the same folder as ``uri``."""
    base, sep, query = uri.rstrip("/").partition("?")
    head = base.rstrip("/").rsplit("/", 1)[0] if "/" in base.rstrip("/") else ""
    return f"{head}/{name}{sep}{query}" if head else f"{name}{sep}{query}"


def _name(uri: str) -> str:
    return uri.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


class ArrowFolders:
    """Folders through pyarrow: the local disk (atomic rename and swap) or an object store."""

    def __init__(self, output: str) -> None:
        self.atomic_rename = storage.locate(output).local

    def exists(self, uri: str) -> bool:
        return storage.locate(uri).exists()

    def is_file(self, uri: str) -> bool:
        return storage.locate(uri).info().type == pafs.FileType.File

    def rename(self, source: str, target: str) -> None:
        src, dst = storage.locate(source), storage.locate(target)
        if src.local:
            os.replace(src.path, dst.path)
            return
        # No rename on an object store: a server-side copy, then the source deleted.
        src.fs.copy_file(src.path, dst.path)
        src.fs.delete_file(src.path)

    def delete(self, uri: str) -> None:
        location = storage.locate(uri)
        if location.local:
            shutil.rmtree(location.path, ignore_errors=True)
            return
        info = location.info()
        if info.type == pafs.FileType.File:
            location.fs.delete_file(location.path)
        elif info.type == pafs.FileType.Directory:
            location.fs.delete_dir(location.path)

    def write_text(self, uri: str, text: str) -> None:
        location = storage.locate(uri)
        with location.fs.open_output_stream(location.path) as stream:
            stream.write(text.encode())

    def files(self, uri: str, everything: bool = False) -> list[str]:
        location = storage.locate(uri)
        base = location.path.rstrip("/")
        infos = location.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
        names = [i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File]
        return sorted(n for n in names if everything or (n.endswith(".parquet") and not storage.hidden(n)))


class HadoopFolders:
    """Folders through the Hadoop ``FileSystem`` of a Spark session (the driver's JVM), so that any
    store Hadoop is configured for works; Python's ``os`` is used for local paths only."""

    _ATOMIC = frozenset({"file", "hdfs", "viewfs"})  # directory rename is one metadata operation

    def __init__(self, spark: Any, output: str) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.atomic_rename = storage.scheme(output) in ("", *self._ATOMIC)

    def _path(self, uri: str) -> tuple[Any, Any]:
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        return path.getFileSystem(self._conf), path

    def exists(self, uri: str) -> bool:
        fs, path = self._path(uri)
        return bool(fs.exists(path))

    def is_file(self, uri: str) -> bool:
        fs, path = self._path(uri)
        return bool(fs.exists(path) and fs.getFileStatus(path).isFile())

    def rename(self, source: str, target: str) -> None:
        fs, src = self._path(source)
        _, dst = self._path(target)
        fs.mkdirs(dst.getParent())  # Hadoop's rename fails, answering False, into a missing folder
        if not fs.rename(src, dst):  # Hadoop answers False rather than raising
            raise OSError(errno.EIO, "Hadoop FileSystem.rename returned false", storage.redact(target))

    def delete(self, uri: str) -> None:
        fs, path = self._path(uri)
        fs.delete(path, True)

    def write_text(self, uri: str, text: str) -> None:
        fs, path = self._path(uri)
        stream = fs.create(path, True)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()

    def files(self, uri: str, everything: bool = False) -> list[str]:
        fs, path = self._path(uri)
        if not fs.exists(path):
            return []
        base = str(fs.makeQualified(path).toUri().getPath()).rstrip("/")
        found = fs.listFiles(path, True)
        names = []
        while found.hasNext():
            name = str(found.next().getPath().toUri().getPath())[len(base) + 1 :]
            if everything or (name.endswith(".parquet") and not storage.hidden(name)):
                names.append(name)
        return sorted(names)


def publish_folder(
    output: str,
    write: Callable[[str], int],
    metadata: dict[str, Any],
    mode: str,
    folders: Folders | None = None,
) -> int:
    """Have ``write`` fill a hidden temporary folder beside ``output``, then publish it there.

    Args:
        output: Path or URI of the folder (Hadoop URIs are passed to ``folders`` unchanged).
        write: Writes the Parquet parts into the folder it is given; returns the row count.
        metadata: Run metadata, stored in the folder's ``_scoring.json`` with ``rows`` and ``files``.
        mode: ``overwrite`` or ``error``.
        folders: The store's operations; default: pyarrow's (local disk or object store).

    Returns:
        The number of rows published.
    """
    output = str(output)
    folders = folders if folders is not None else ArrowFolders(output)
    tmp = sibling(output, temporary_name(_name(output)))
    try:
        rows = write(tmp)
        try:
            manifest = {**metadata, "rows": rows, "files": folders.files(tmp), "status": "committed"}
            if folders.atomic_rename:
                folders.write_text(child(tmp, MANIFEST), json.dumps(manifest, indent=2, default=str))
                _swap(folders, tmp, output, mode)
            else:
                _commit(folders, tmp, output, mode, manifest)
        except OSError as exc:
            raise OutputError(
                f"output '{storage.redact(output)}' cannot be published: {storage.scrub(str(exc.strerror or exc))}"
            ) from None
        return rows
    finally:
        with contextlib.suppress(Exception):
            folders.delete(tmp)


def _swap(folders: Folders, tmp: str, output: str, mode: str) -> None:
    """Put ``tmp`` at ``output`` by rename; an existing result is replaced in one step where the
    system can (Linux ``renameat2``), else by two renames with the previous result put back on failure."""
    if not folders.exists(output):
        folders.rename(tmp, output)
        return
    if mode == "error":
        raise OutputError(f"output '{storage.redact(output)}' appeared while the job ran and the write mode is 'error'")
    local = storage.locate(output) if not storage.is_remote(output) or storage.scheme(output) == "file" else None
    if local is not None and _exchange(storage.locate(tmp).path, local.path):
        folders.delete(tmp)  # it holds the previous result now
        return
    # A Hadoop rename onto an existing folder would move the new folder inside it: move the old away first.
    old = sibling(output, f".{_name(output)}.old-{uuid.uuid4().hex[:12]}-{os.getpid()}@{socket.gethostname()}")
    folders.rename(output, old)
    try:
        folders.rename(tmp, output)
    except BaseException:
        folders.rename(old, output)
        raise
    folders.delete(old)


def _commit(folders: Folders, tmp: str, output: str, mode: str, manifest: dict[str, Any]) -> None:
    """The commit protocol of stores without an atomic rename (see the module docstring).

    The marker object stays in place throughout, so a checking reader never takes the folder for
    a plain one while its files change.
    """
    marker = child(output, MANIFEST)
    if folders.exists(output):
        if mode == "error":
            raise OutputError(
                f"output '{storage.redact(output)}' appeared while the job ran and the write mode is 'error'"
            )
        folders.write_text(marker, json.dumps({"status": "publishing"}))
        for name in folders.files(output, everything=True):
            if name != MANIFEST:
                folders.delete(child(output, name))
    for name in folders.files(tmp, everything=True):
        folders.rename(child(tmp, name), child(output, name))
    folders.write_text(marker, json.dumps(manifest, indent=2, default=str))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Returns False where the system or file system cannot (then nothing was changed).
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)
