"""Storage: URIs to filesystems, for tables, outputs and model files.

One function, :func:`locate`, turns what a user wrote (``data/t.parquet``, ``file:///d/t``,
``s3://bucket/t/``, ``gs://bucket/t``, ``az://container/t``, ``abfs://container@account.dfs.core.windows.net/t``)
into a :class:`Location`: a pyarrow filesystem (S3, GCS and Azure are built into the pyarrow
wheel; nothing is downloaded at run time) and a path inside it.

Credentials come from each store's standard places and are never written anywhere:

- S3: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
  ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` and the endpoint override ``AWS_ENDPOINT_URL`` /
  ``AWS_ENDPOINT_URL_S3`` (MinIO, moto, any S3-compatible store). The filesystem is built with
  ``FileSystem.from_uri``, because a bare ``S3FileSystem()`` ignores the endpoint variables.
- GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` (Google's default credentials).
- Azure: ``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME`` (or
  ``AZURE_STORAGE_ACCOUNT``) with ``AZURE_STORAGE_ACCOUNT_KEY`` (or ``AZURE_STORAGE_KEY``) or
  ``AZURE_STORAGE_SAS_TOKEN``; else Azure's default credential (``AZURE_CLIENT_ID`` ...). pyarrow's
  Azure filesystem takes no connection string, so it is read here.

Hadoop URIs (``hdfs://``, ``s3a://``, ``abfss://``, ``wasbs://``, ``viewfs://``) belong to the
Spark engine, which passes them to Hadoop unchanged (:func:`is_hadoop`).

:func:`redact` and :func:`scrub` keep credentials out of every line, manifest and error.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow.fs as pafs

from scoring.errors import AuthenticationError, ConfigError, ScoringError
from scoring.redact import redact as _redact

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
GLOB_CHARS = "*?["
MANIFEST = "_scoring.json"  # a published folder's manifest, and its commit marker (scoring.publish)

# Read by Hadoop alone (the Spark engine, which passes every URI to Hadoop unchanged): none has a
# pyarrow filesystem in the wheel.
_HADOOP_ONLY = frozenset({"hdfs", "s3n", "wasb", "wasbs", "viewfs", "adl"})
_AZURE = frozenset({"az", "abfs", "abfss"})


def scheme(uri: str) -> str:
    """The lower-case scheme of ``uri`` (``""`` for a plain local path)."""
    match = _SCHEME.match(uri)
    return match["scheme"].lower() if match else ""


def is_remote(uri: str) -> bool:
    """True for a URI on an object store or Hadoop (anything but a plain path or ``file://``)."""
    return scheme(uri) not in ("", "file")


def is_hadoop(uri: str) -> bool:
    """True for a URI only Hadoop reads (``hdfs://``, ``wasbs://`` ...): the Spark engine's alone."""
    return scheme(uri) in _HADOOP_ONLY


def has_glob(path: str) -> bool:
    """True if ``path`` holds a glob character."""
    return any(ch in path for ch in GLOB_CHARS)


# user:password@ where the password holds an unescaped '/' (AWS secret keys often do), which
# scoring.redact's rule, ending the user info at the first '/', would leave in place.
# One rule for every secret the package might print or store: scoring.redact (it also blanks the
# values of the credential variables below, wherever a library error quotes them).
redact = _redact
scrub = _redact


@dataclass(frozen=True)
class Location:
    """A file, folder or glob on one filesystem.

    Attributes:
        uri: What the user wrote (may hold credentials: show :attr:`display` instead).
        fs: The pyarrow filesystem.
        path: The path inside ``fs`` (``bucket/key`` on object stores).
    """

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def display(self) -> str:
        """The URI as it may be shown: credentials removed."""
        return redact(self.uri)

    @property
    def local(self) -> bool:
        """True on the local file system (where rename is atomic)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        """The last path component."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def sibling(self, name: str) -> Location:
        """The location ``name`` beside this one (same folder, same filesystem)."""
        parent = self.path.rstrip("/").rsplit("/", 1)[0] if "/" in self.path.rstrip("/") else ""
        base, query = _split_query(self.uri.rstrip("/"))
        head = base.rsplit("/", 1)[0] if "/" in base else ""
        uri = f"{head}/{name}{query}" if head else f"{name}{query}"
        return Location(uri, self.fs, f"{parent}/{name}" if parent else name)

    def info(self) -> pafs.FileInfo:
        """The store's answer for this path (type ``NotFound`` when nothing is there)."""
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise store_error(exc, self, "cannot be read") from None

    def exists(self) -> bool:
        """True if a file or folder is at this path (an object store's prefix counts as a folder)."""
        return self.info().type != pafs.FileType.NotFound


def _split_query(uri: str) -> tuple[str, str]:
    base, sep, query = uri.partition("?")
    return base, f"{sep}{query}"


def locate(uri: str) -> Location:
    """The filesystem and path of a local path or a URI.

    Raises:
        ConfigError: an unknown scheme, or one only Hadoop (the Spark engine) reads.
    """
    kind = scheme(uri)
    if kind == "":
        return Location(uri, _local(), os.path.abspath(os.path.expanduser(uri)))
    if kind == "file":
        return Location(uri, _local(), unquote(urlsplit(uri).path) or "/")
    if kind in ("s3", "s3a"):
        return _s3(uri)
    if kind in ("gs", "gcs"):
        base, rest = _bucket_and_key(uri)
        filesystem, root = _from_uri(base)
        return Location(uri, filesystem, f"{root}/{rest}".rstrip("/") if rest else root)
    if kind in _AZURE:
        return _azure(uri)
    if kind in _HADOOP_ONLY:
        raise ConfigError(f"'{redact(uri)}' is a Hadoop URI: read and write it with --engine spark")
    raise ConfigError(
        f"'{redact(uri)}': scheme '{kind}' is not a supported store "
        "(a local path, file://, s3://, gs://, az://, abfs://; hdfs:// and s3a:// on --engine spark)"
    )


@functools.lru_cache(maxsize=1)
def _local() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


def _bucket_and_key(uri: str) -> tuple[str, str]:
    """``s3://b/k/x?q`` -> (``s3://b?q``, ``k/x``): the filesystem is built from the bucket alone, so
    a glob in the key never reaches the URI parser."""
    base, query = _split_query(uri)
    head, _, rest = base.partition("://")
    bucket, _, key = rest.partition("/")
    return f"{head}://{bucket}{query}", key


def _s3(uri: str) -> Location:
    base, key = _bucket_and_key(uri)
    if scheme(base) == "s3a":  # the same store; pyarrow knows it as s3
        base = "s3" + base[3:]
    if not base.split("://", 1)[1].split("?", 1)[0].rsplit("@", 1)[-1]:
        raise ConfigError(f"'{redact(uri)}' names no bucket (expected s3://bucket/key)")
    filesystem, bucket = _from_uri(base)
    return Location(uri, filesystem, f"{bucket}/{key}".rstrip("/") if key else bucket)


def _from_uri(base: str) -> tuple[pafs.FileSystem, str]:
    """``FileSystem.from_uri`` of a bucket URI, built once per bucket and environment."""
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_"))))
    return _cached_from_uri(base, settings)


@functools.lru_cache(maxsize=32)
def _cached_from_uri(base: str, settings: tuple[tuple[str, str], ...]) -> tuple[pafs.FileSystem, str]:
    # ``settings`` is only the cache key: pyarrow reads the same variables from the environment.
    custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if scheme(base) == "s3" and custom_endpoint and "region=" not in base and not _s3_region_known():
        # Without a region pyarrow asks where the bucket lives, a question an S3-compatible store
        # need not answer; such stores take any region.
        base += ("&" if "?" in base else "?") + "region=us-east-1"
    try:
        return pafs.FileSystem.from_uri(base)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise store_error(exc, None, f"'{redact(base)}' cannot be opened") from None


def _s3_region_known() -> bool:
    return bool(os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


def _connection_string() -> dict[str, str]:
    raw = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    parts: dict[str, str] = {}
    for item in raw.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            parts[key.strip().lower()] = value.strip()
    return parts


# Azurite's documented well-known development account (not a secret: it is in Microsoft's docs).
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azure(uri: str) -> Location:
    base, query = _split_query(uri)
    options = {k.lower(): v for k, v in parse_qsl(query.lstrip("?"))}
    rest = base.split("://", 1)[1]
    authority, _, key = rest.partition("/")
    container, _, host = authority.rpartition("@") if "@" in authority else (authority, "", "")
    parts = _connection_string()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        parts = {"accountname": _DEV_ACCOUNT, "accountkey": _DEV_KEY, "blobendpoint": "http://127.0.0.1:10000/"}
    account = (
        options.get("account_name")
        or (host.split(".", 1)[0] if host else "")
        or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        or os.environ.get("AZURE_STORAGE_ACCOUNT")
        or parts.get("accountname", "")
    )
    if not account:
        raise ConfigError(
            f"'{redact(uri)}' names no storage account: set AZURE_STORAGE_ACCOUNT_NAME or "
            "AZURE_STORAGE_CONNECTION_STRING, or write abfs://container@ACCOUNT.dfs.core.windows.net/path"
        )
    kwargs: dict[str, Any] = {}
    secret = (
        os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") or os.environ.get("AZURE_STORAGE_KEY") or parts.get("accountkey")
    )
    sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN") or parts.get("sharedaccesssignature")
    if secret:
        kwargs["account_key"] = secret
    elif sas:
        kwargs["sas_token"] = sas.lstrip("?")
    endpoint = parts.get("blobendpoint")
    if endpoint:
        split = urlsplit(endpoint)
        kwargs["blob_storage_scheme"] = split.scheme or "https"
        kwargs["blob_storage_authority"] = split.netloc
        kwargs["dfs_storage_scheme"] = split.scheme or "https"
        kwargs["dfs_storage_authority"] = split.netloc
    elif parts.get("endpointsuffix"):
        kwargs["blob_storage_authority"] = f"blob.{parts['endpointsuffix']}"
        kwargs["dfs_storage_authority"] = f"dfs.{parts['endpointsuffix']}"
    filesystem = _azure_fs(account, tuple(sorted(kwargs.items())))
    path = f"{container}/{key}".rstrip("/") if key else container
    return Location(uri, filesystem, path)


@functools.lru_cache(maxsize=8)
def _azure_fs(account: str, options: tuple[tuple[str, str], ...]) -> pafs.FileSystem:
    try:
        return pafs.AzureFileSystem(account, **dict(options))
    except (OSError, ValueError) as exc:
        raise store_error(exc, None, f"Azure account '{account}' cannot be opened") from None


# -- listing ------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """DuckDB's glob rules: ``*`` and ``?`` stay inside one folder, ``**`` spans folders."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape("[")
                i += 1
            else:
                out += fnmatch.translate(pattern[i : end + 1])[4:-3]
                i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def hidden(relative: str) -> bool:
    """Hidden and underscore names (temporaries, ``_SUCCESS``, manifests) are never data files."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def parquet_files(location: Location) -> tuple[list[str], str | None]:
    """The Parquet files of a file, folder or glob, and the folder hive partitions start at.

    Returns:
        (files, partition base): the base is None for a single file.
    """
    path = location.path
    if has_glob(path):
        cut = min(path.find(ch) for ch in GLOB_CHARS if ch in path)
        base = path[:cut].rsplit("/", 1)[0]
        regex = _glob_regex(path[len(base) + 1 :])
        return sorted(
            f for f in _list(location, base) if regex.match(f[len(base) + 1 :]) and not hidden(f[len(base) + 1 :])
        ), base
    info = location.info()
    if info.type == pafs.FileType.File:
        return [path], None
    base = path.rstrip("/")
    manifest = read_manifest(location) if info.type == pafs.FileType.Directory else None
    if manifest is not None and manifest.get("status") == "publishing":
        from scoring.errors import InputDataError

        raise InputDataError(f"'{location.display}' is being replaced by another run (its {MANIFEST} says so); retry")
    if manifest is not None and isinstance(manifest.get("files"), list):  # committed: exactly its files
        return [f"{base}/{name}" for name in manifest["files"]], base
    return sorted(f for f in _list(location, base) if f.endswith(".parquet") and not hidden(f[len(base) + 1 :])), base


def _list(location: Location, base: str) -> list[str]:
    try:
        infos = location.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
    except OSError as exc:
        raise store_error(exc, location, "cannot be listed") from None
    return [i.path for i in infos if i.type == pafs.FileType.File]


def read_manifest(folder: Location) -> dict[str, Any] | None:
    """The ``_scoring.json`` of a folder published by :func:`scoring.publish.publish_folder`, or None."""
    path = f"{folder.path.rstrip('/')}/{MANIFEST}"
    try:
        with folder.fs.open_input_stream(path) as fh:
            found = json.loads(fh.read())
    except (FileNotFoundError, ValueError):
        return None
    except OSError as exc:
        if folder.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise store_error(exc, folder, "cannot be read") from None
    return found if isinstance(found, dict) else None


# -- errors -------------------------------------------------------------------------------------

# pyarrow reports S3 and Azure failures as a plain OSError; the service's error code is only
# in its text (pyarrow exposes no status detail to Python), so the code, not the wording, is matched.
_DENIED = re.compile(
    r"AWS Error (ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|EXPIRED_TOKEN|UNRECOGNIZED_CLIENT"
    r"|INVALID_CLIENT_TOKEN_ID)\b|AWS Error UNKNOWN \(HTTP status 40[13]\)|(?<!\d)40[13] (?:Server failed to "
    r"authenticate|This request is not authorized)|\b(AuthenticationFailed|AuthorizationFailure|"
    r"AuthorizationPermissionMismatch|InvalidAccessKeyId|SignatureDoesNotMatch)\b"
)


def store_error(
    exc: BaseException, location: Location | None, what: str, kind: type[ScoringError] | None = None
) -> ScoringError:
    """One line for a failed store call: an :class:`AuthenticationError` when the store refused
    the credentials, else ``kind`` (default :class:`~scoring.errors.OutputError`), never a secret."""
    from scoring.errors import OutputError

    text = str(exc).strip()
    first = scrub(text.splitlines()[0] if text else type(exc).__name__)
    where = f"'{location.display}' " if location is not None else ""
    match = _DENIED.search(text)
    if match is not None:
        code = next(g for g in match.groups() if g) if any(match.groups()) else "HTTP 401/403"
        return AuthenticationError(
            f"{where}{what}: the store refused the credentials ({code}); "
            "check AWS_* / AZURE_STORAGE_* / GOOGLE_APPLICATION_CREDENTIALS"
        )
    return (kind or OutputError)(f"{where}{what}: {first}")


# -- tables -------------------------------------------------------------------------------------


def open_dataset(uri: str) -> Any:
    """A pyarrow dataset of the Parquet file, folder or glob at ``uri``, hive partitions as columns.

    A dataset (not a table) so that the engine scanning it pushes projections and filters down to
    the files, and so that it scans through pyarrow's filesystem rather than the engine's own file
    access (which the sandbox turns off).

    Raises:
        InputDataError: nothing readable is there.
        AuthenticationError: the store refused the credentials.
    """
    import pyarrow.dataset as ds

    from scoring.errors import InputDataError

    location = locate(uri)
    files, base = parquet_files(location)
    if not files:
        raise InputDataError(f"no Parquet file at '{location.display}'")
    try:
        if base is None:
            return ds.dataset(files[0], filesystem=location.fs, format="parquet")
        return ds.dataset(files, filesystem=location.fs, format="parquet", partitioning="hive", partition_base_dir=base)
    except OSError as exc:
        raise store_error(exc, location, "cannot be read as Parquet", InputDataError) from None
    except Exception as exc:  # pyarrow.ArrowInvalid: a corrupt footer or clashing schemas
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputDataError(f"'{location.display}' cannot be read as Parquet: {scrub(first)}") from None


# -- single files (models) ----------------------------------------------------------------------


def download(uri: str, target: Any, what: str, timeout: float = 60) -> None:
    """Copy the file at ``uri`` (object store, ``http(s)://``) to the local path ``target``.

    Raises:
        ModelNotFoundError: nothing is there.
        AuthenticationError: the store or server refused the credentials.
        RegistryUnavailableError: the server cannot be reached (retryable).
    """
    from scoring.errors import ModelNotFoundError, RegistryUnavailableError

    if scheme(uri) in ("http", "https"):
        import shutil
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri, timeout=timeout) as response, open(target, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise AuthenticationError(f"{what}: the server refused the request (HTTP {exc.code})") from None
            if exc.code == 404:
                raise ModelNotFoundError(f"{what}: no file there (HTTP 404)") from None
            raise RegistryUnavailableError(f"{what}: the server answered HTTP {exc.code}") from None
        except OSError as exc:  # refused connection, timeout, TLS failure
            reason = getattr(exc, "reason", None) or exc
            raise RegistryUnavailableError(f"{what}: cannot be fetched ({scrub(str(reason))})") from None
        return
    location = locate(uri)
    try:
        found = location.info().type == pafs.FileType.File
    except AuthenticationError:
        raise
    except ScoringError as exc:
        raise RegistryUnavailableError(f"{what}: {exc}") from None
    if not found:
        raise ModelNotFoundError(f"{what}: no file at '{location.display}'")
    try:
        with location.fs.open_input_stream(location.path) as source, open(target, "wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
    except OSError as exc:
        raise store_error(exc, location, "cannot be read", RegistryUnavailableError) from None
