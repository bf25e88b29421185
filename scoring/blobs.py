"""The content-addressed model store: checked before anything lands, shared across users.

A model is stored once per content: ``blobs/<sha256>.onnx`` for a self-contained ONNX file,
``blobs/<sha256>/`` (the ONNX file plus its external data files, names kept) for a model whose
weights live beside it (``mlflow.onnx.log_model``'s default ``save_as_external_data=True``).
The sha256 of a folder covers every file in it, names included.

Before a byte is copied, the source must be a regular file (never a device or FIFO, which
would be read forever), within the size limit, start like an ONNX model, and name only
external data files inside its own folder. Files are published with an atomic rename.

The store is shared: folders are created ``2775`` (setgid, so files keep the cache's group)
and files ``0664``, whatever the umask, so a second user of the same group can add models.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import stat
import tempfile
from pathlib import Path

from scoring.errors import ConfigError, ModelLoadError

FOLDER_MODE = 0o2775
FILE_MODE = 0o664
DEFAULT_MAX_BYTES = 4 << 30
_CHUNK = 1 << 20


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (and parents) group-shared; a folder that cannot be made is a config error."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    try:
        for item in reversed(missing):
            with contextlib.suppress(FileExistsError):
                item.mkdir()
                os.chmod(item, FOLDER_MODE)  # chmod ignores the umask; mkdir's mode does not
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as exc:
        raise ConfigError(
            f"model cache '{folder}' cannot be created: {exc.strerror or type(exc).__name__}; set SCORING_CACHE_DIR "
            "(or SCORING_HOME) to a writable folder, e.g. a mounted volume or /tmp in a read-only container"
        ) from None
    return folder


def check_file(path: Path, what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Refuse anything but a regular file of at most ``max_bytes``; return its size."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ModelLoadError(f"model '{what}': {path.name} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"model '{what}': {path} is not a regular file (a device, FIFO or socket)")
    if info.st_size > max_bytes:
        raise ModelLoadError(
            f"model '{what}': {path.name} is {info.st_size:,} bytes, over the limit of {max_bytes:,} bytes "
            "(SCORING_MODEL_MAX_BYTES)"
        )
    return info.st_size


# -- the ONNX protobuf, read just far enough ------------------------------------------------------
# ModelProto.graph = 7; GraphProto.node = 1, initializer = 5, sparse_initializer = 15;
# NodeProto.attribute = 5; AttributeProto.t = 5, g = 6, tensors = 10, graphs = 11,
# sparse_tensor = 22, sparse_tensors = 23; SparseTensorProto.values = 1, indices = 2;
# TensorProto.external_data = 13 (key = 1, value = 2). See onnx/onnx.proto.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _ENTRY = range(7)
_CHILDREN = {
    _MODEL: {7: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _ENTRY},
}


def _varint(data: memoryview | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview | mmap.mmap, start: int, end: int):  # type: ignore[no-untyped-def]
    """(field number, wire type, value or (start, end)) of one protobuf message."""
    pos = start
    while pos < end:
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise ValueError("truncated field")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")


def _external_locations(data: memoryview | mmap.mmap) -> set[str]:
    found: set[str] = set()
    stack = [(_MODEL, 0, len(data))]
    while stack:
        kind, start, end = stack.pop()
        if kind == _ENTRY:
            entry = {n: bytes(data[v[0] : v[1]]).decode() for n, w, v in _fields(data, start, end) if w == 2}
            if entry.get(1) == "location" and 2 in entry:
                found.add(entry[2])
            continue
        children = _CHILDREN.get(kind, {})
        for number, wire, value in _fields(data, start, end):
            if wire == 2 and number in children:
                stack.append((children[number], *value))  # type: ignore[misc]
    return found


def _looks_like_onnx(head: bytes) -> bool:
    """ModelProto starts with ir_version (field 1, varint; 3..~20 today) then another known field."""
    if len(head) < 4 or head[0] != 0x08:
        return False
    try:
        version, pos = _varint(memoryview(head), 1, len(head))
        tag, _ = _varint(memoryview(head), pos, len(head))
    except ValueError:
        return False
    return 1 <= version <= 64 and 1 <= tag >> 3 <= 30 and tag & 7 in (0, 2)


def model_files(onnx_file: Path, what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Path]:
    """The ONNX file and the external data files it names, every one checked and confined.

    Raises:
        ModelLoadError: not a regular file, over the size limit, not ONNX, or an external
            data path that leaves the model's folder.
    """
    total = check_file(onnx_file, what, max_bytes)
    with onnx_file.open("rb") as fh:
        if not _looks_like_onnx(fh.read(16)):
            raise ModelLoadError(f"model '{what}': {onnx_file.name} is not an ONNX model (no ONNX header)")
        try:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                locations = _external_locations(data)
        except ValueError as exc:
            raise ModelLoadError(f"model '{what}': {onnx_file.name} is not a loadable ONNX model: {exc}") from None
    folder = onnx_file.parent.resolve()
    files = [onnx_file]
    for location in sorted(locations):
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder) or target == folder:
            raise ModelLoadError(f"model '{what}': external data '{location}' is outside the model's folder; refused")
        total += check_file(target, what, max_bytes)
        if total > max_bytes:
            raise ModelLoadError(f"model '{what}' is over the limit of {max_bytes:,} bytes (SCORING_MODEL_MAX_BYTES)")
        files.append(target)
    return files


class Store:
    """The blobs of one cache folder."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.blobs = self.cache_dir / "blobs"

    def path(self, sha: str) -> Path:
        """The ONNX file of ``sha`` in the store (inside its folder for external data), or None."""
        folder = self.blobs / sha
        if folder.is_dir():
            marker = folder / ".model"
            with contextlib.suppress(OSError):
                return folder / marker.read_text().strip()
        return self.blobs / f"{sha}.onnx"

    def has(self, sha: str) -> bool:
        """Whether ``sha`` is stored completely."""
        return self.path(sha).is_file()

    def put(self, onnx_file: Path, what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, Path]:
        """Check and store a model; return its sha256 and its ONNX file in the store."""
        files = model_files(onnx_file, what, max_bytes)
        make_folder(self.blobs)
        if len(files) == 1:
            return self._put_file(onnx_file, max_bytes)
        return self._put_folder(files, max_bytes)

    def _put_file(self, source: Path, max_bytes: int) -> tuple[str, Path]:
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _copy(source, out, max_bytes)
            sha = digest.hexdigest()
            blob = self.blobs / f"{sha}.onnx"
            if not blob.is_file():
                os.chmod(tmp, FILE_MODE)
                os.replace(tmp, blob)  # atomic: readers see no file or the whole file
            return sha, blob
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _put_folder(self, files: list[Path], max_bytes: int) -> tuple[str, Path]:
        base = files[0].parent.resolve()
        tmp = Path(tempfile.mkdtemp(dir=self.blobs, prefix=".tmp-"))
        try:
            os.chmod(tmp, FOLDER_MODE)
            digest = hashlib.sha256()
            for source in sorted(files, key=lambda f: str(f.resolve().relative_to(base))):
                relative = source.resolve().relative_to(base)
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                digest.update(f"{relative.as_posix()}\0".encode())
                with target.open("wb") as out:
                    digest.update(_copy(source, out, max_bytes).digest())
                os.chmod(target, FILE_MODE)
            (tmp / ".model").write_text(files[0].name)
            os.chmod(tmp / ".model", FILE_MODE)
            sha = digest.hexdigest()
            folder = self.blobs / sha
            if not folder.is_dir():
                with contextlib.suppress(FileExistsError, OSError):
                    os.rename(tmp, folder)  # atomic; a concurrent fill of the same content wins alike
            return sha, folder / files[0].name
        finally:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)


def _copy(source: Path, out: object, max_bytes: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    copied = 0
    with source.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            copied += len(chunk)
            if copied > max_bytes:  # the file grew since it was checked
                raise ModelLoadError(f"model file {source.name} is over the limit of {max_bytes:,} bytes")
            digest.update(chunk)
            out.write(chunk)  # type: ignore[attr-defined]
    return digest
