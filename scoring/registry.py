"""Registry: turn a model URI into a pinned, locally cached ONNX file.

Accepted URIs: ``models:/name/version``, ``models:/name@alias``, ``models:/name/latest``,
``runs:/<run_id>/<path>``, a local ``.onnx`` file and a local MLflow model folder.
An alias or ``latest`` is resolved to a version here, once, so everything downstream
(every DuckDB thread, every Spark executor) scores with the same version.

Files land in a content-addressed cache (:mod:`scoring.blobs`: ``<cache>/blobs/<sha256>.onnx``,
or ``<cache>/blobs/<sha256>/`` for a model with external data) written with an atomic rename,
after they are checked, so two jobs sharing the cache never see a torn or foreign file. A
pinned version already cached is used without downloading it again. MLflow's errors become
ours by error code, HTTP status and exception class (:mod:`scoring.registry_errors`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring import storage
from scoring.blobs import DEFAULT_MAX_BYTES, FILE_MODE, Store, make_folder
from scoring.errors import (
    ConfigError,
    ModelLoadError,
    ModelNotFoundError,
    did_you_mean,
)
from scoring.redact import redact
from scoring.registry_errors import translate

log = logging.getLogger(__name__)

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")
_REMOTE_FILES = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class ModelRef:
    """A model pinned to one immutable file.

    Attributes:
        uri: The URI as the user wrote it.
        name: Registered model name (or file stem for a local file).
        version: Registry version; ``None`` for run artifacts and local files.
        sha256: Hex digest of the ONNX file.
        path: The ONNX file in the local cache.
        pinned_uri: A URI that names exactly this version (``models:/bc/3``).
        signature: MLflow signature (``{"inputs": [...], "outputs": [...]}``) when logged.
    """

    uri: str
    name: str
    version: str | None
    sha256: str
    path: Path
    pinned_uri: str
    signature: dict[str, Any] | None = field(default=None, compare=False)

    def signature_columns(self) -> list[str] | None:
        """Column names of a column-based MLflow input signature, in order."""
        if not self.signature or not self.signature.get("inputs"):
            return None
        names = [spec.get("name") for spec in self.signature["inputs"]]
        if not names or any(n is None for n in names):
            return None
        return [str(n) for n in names]

    def describe(self) -> dict[str, Any]:
        """What run metadata records about this model."""
        return {
            "uri": self.uri,
            "name": self.name,
            "version": self.version,
            "pinned_uri": self.pinned_uri,
            "sha256": self.sha256,
        }


def _require_database(uri: str) -> None:
    """Refuse a sqlite store whose file does not exist: MLflow would create an empty one there
    and report every model missing."""
    database = _sqlite_file(uri)
    if database is not None and not database.exists():
        raise ConfigError(
            f"no MLflow registry at {uri}: the file does not exist "
            "(check SCORING_HOME, SCORING_TRACKING_URI or MLFLOW_TRACKING_URI)"
        )


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (None for other stores and in-memory)."""
    if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _read_mlmodel(folder: Path, uri: str) -> tuple[Path, dict[str, Any] | None]:
    """Find the ONNX file of an MLflow model folder; refuse other flavors."""
    import yaml  # shipped with mlflow

    mlmodel = folder / "MLmodel"
    if not mlmodel.exists():
        files = sorted(folder.rglob("*.onnx"))
        if len(files) == 1:
            return files[0], None
        raise ModelLoadError(f"model '{uri}': no MLmodel file and no single .onnx file in {folder}")
    meta = yaml.safe_load(mlmodel.read_text()) or {}
    flavors = meta.get("flavors") or {}
    if "onnx" not in flavors:
        raise ModelLoadError(
            f"model '{uri}' has flavors {sorted(flavors)}; only the 'onnx' flavor is loaded "
            "(log it with mlflow.onnx.log_model)"
        )
    named = str(flavors["onnx"].get("data", "model.onnx"))
    onnx_file = (folder / named).resolve()
    if Path(named).is_absolute() or not onnx_file.is_relative_to(folder.resolve()):
        raise ModelLoadError(f"model '{uri}': MLmodel names ONNX file '{named}' outside the artifact folder; refused")
    if not onnx_file.is_file():
        raise ModelLoadError(f"model '{uri}': ONNX file {onnx_file.name} missing from the artifacts")
    signature = None
    if meta.get("signature"):
        signature = {
            key: json.loads(value) if isinstance(value, str) else value
            for key, value in meta["signature"].items()
            if key in ("inputs", "outputs")
        }
    return onnx_file, signature


class Registry:
    """Resolves model URIs against one MLflow registry and caches the files.

    Args:
        tracking_uri: MLflow tracking URI.
        registry_uri: MLflow registry URI; defaults to ``tracking_uri``.
        cache_dir: Folder of the content-addressed cache.
        timeout: Seconds per HTTP request to a remote registry.
        retries: Retries per HTTP request.
        max_bytes: Largest model accepted (ONNX file plus external data).
    """

    def __init__(
        self,
        tracking_uri: str,
        cache_dir: Path,
        registry_uri: str | None = None,
        timeout: int = 30,
        retries: int = 2,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.cache_dir = Path(cache_dir)
        # MLflow reads its HTTP timeouts and retries from process-wide variables only; a library
        # must not change those for its host, so the CLI sets them (scoring.cli) and an embedding
        # program keeps its own. `timeout` bounds the one diagnostic request made here.
        self.timeout = timeout
        self.retries = retries
        self.shown_uri = redact(self.registry_uri)
        self.max_bytes = max_bytes
        self.store = Store(self.cache_dir)
        self._client: Any = None

    # -- public -------------------------------------------------------------------------------

    def resolve(self, uri: str) -> ModelRef:
        """Pin ``uri`` to one file in the local cache and return its reference.

        Raises:
            ModelNotFoundError: the model, version, alias or file does not exist.
            RegistryUnavailableError: the registry cannot be reached (retryable).
            ModelLoadError: the artifact is not an ONNX model.
        """
        if match := _MODELS_URI.match(uri):
            return self._resolve_registered(uri, match["name"], match["version"], match["alias"])
        if match := _RUNS_URI.match(uri):
            return self._resolve_run(uri, match["run_id"], match["path"])
        if storage.scheme(uri) in _REMOTE_FILES:
            return self._resolve_remote_file(uri)
        if "://" in uri or uri.startswith(("models:", "runs:")):
            raise ModelNotFoundError(
                f"model URI '{uri}' is not understood; expected models:/name/version, "
                "models:/name@alias, models:/name/latest, runs:/run_id/path or a local .onnx path"
            )
        return self._resolve_local(uri)

    # -- registered models --------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            _require_database(self.registry_uri)

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, missing: str | None = None) -> Any:
        """``fn(*args)`` with MLflow's errors as ours (:mod:`scoring.registry_errors`); ``missing``
        is the line for "not found"."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args)
        except (MlflowException, OSError) as exc:  # requests' ConnectionError is an OSError
            raise translate(exc, what, self.registry_uri, missing, self.timeout) from None

    def _model_names(self) -> list[str]:
        try:
            return [m.name for m in self.client.search_registered_models(max_results=1000)]
        except Exception:  # suggestions are best effort
            return []

    def _pinned_key(self, name: str, version: str) -> str:
        return hashlib.sha256(f"{self.registry_uri}|{name}|{version}".encode()).hexdigest()[:32]

    def _resolve_registered(self, uri: str, name: str, version: str | None, alias: str | None) -> ModelRef:
        if alias is None and version is not None and version.isdigit():
            # A registry never changes what a version number holds, so a numbered version already
            # in the cache needs no registry call at all (and no MLflow import: ~1.5 s per job).
            cached = self._cached(self._pinned_key(name, version))
            if cached is not None:
                sha, signature = cached
                log.info("model %s pinned to %s (sha256 %s, cached)", uri, uri, sha[:12])
                return ModelRef(uri, name, version, sha, self._blob(sha), f"models:/{name}/{version}", signature)
        registered = self._call_model(name)
        if alias is not None:
            aliases = dict(getattr(registered, "aliases", {}) or {})
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise ModelNotFoundError(
                    f"model '{name}' has no alias '{alias}' (aliases: {known})" + did_you_mean(alias, aliases)
                )
            version = str(aliases[alias])
        elif version is None or version.lower() == "latest":
            found = self._call(f"versions of model '{name}'", self.client.search_model_versions, f"name = '{name}'")
            if not found:
                raise ModelNotFoundError(f"model '{name}' has no versions")
            version = str(max(int(v.version) for v in found))
        elif not version.isdigit():
            raise ModelNotFoundError(f"model URI '{uri}': version '{version}' is not a number, 'latest' or @alias")
        mv = self._get_version(name, version)
        key = hashlib.sha256(f"{self.registry_uri}|{name}|{version}|{mv.creation_timestamp}".encode()).hexdigest()[:32]
        pinned = f"models:/{name}/{version}"
        cached = self._cached(key)
        if cached is not None:
            sha, signature = cached
            log.info("model %s pinned to %s (sha256 %s, cached)", uri, pinned, sha[:12])
            self._write_ref(
                self._pinned_key(name, version), {"sha256": sha, "signature": signature, "pinned_uri": pinned}
            )
            return ModelRef(uri, name, version, sha, self._blob(sha), pinned, signature)

        download_uri = self._call(f"model '{pinned}'", self.client.get_model_version_download_uri, name, version)
        ref = self._download(uri, download_uri, name, version, pinned, key)
        self._write_ref(
            self._pinned_key(name, version), {"sha256": ref.sha256, "signature": ref.signature, "pinned_uri": pinned}
        )
        log.info("model %s pinned to %s (sha256 %s, downloaded)", uri, pinned, ref.sha256[:12])
        return ref

    def _call_model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._call(f"model '{name}'", self.client.get_registered_model, name)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"model '{name}' is not registered in {self.shown_uri}" + did_you_mean(name, self._model_names())
            ) from None
        except MlflowException:  # pragma: no cover - _call maps every MlflowException
            raise

    def _get_version(self, name: str, version: str) -> Any:
        try:
            return self._call(f"model '{name}' version {version}", self.client.get_model_version, name, version)
        except ModelNotFoundError:
            versions = self._call(f"versions of model '{name}'", self.client.search_model_versions, f"name = '{name}'")
            known = ", ".join(sorted((str(v.version) for v in versions), key=int)) or "none"
            raise ModelNotFoundError(f"model '{name}' has no version {version} (versions: {known})") from None

    # -- run artifacts and local files --------------------------------------------------------

    def _resolve_run(self, uri: str, run_id: str, path: str) -> ModelRef:
        name = Path(path.rstrip("/")).name
        pinned = f"runs:/{run_id}/{path}"
        run = self._get_run(run_id)
        try:
            # The run's own artifact location, not `runs:/`: MLflow 2 resolves that scheme against
            # the process-wide tracking URI, which in an embedding program is not the registry's.
            location = f"{str(run.info.artifact_uri).rstrip('/')}/{path.strip('/')}"
            return self._download(uri, location, name, None, pinned, key=None)
        except ModelNotFoundError:
            # MLflow 3 logs a model as a LoggedModel of the run, not as run artifacts, and its own
            # fallback looks it up in the process-wide tracking URI: look it up here instead.
            logged = self._logged_model_location(run, path.rstrip("/"))
            if logged is None:
                raise
            return self._download(uri, logged, name, None, pinned, key=None)

    def _get_run(self, run_id: str) -> Any:
        _require_database(self.tracking_uri)
        return self._call(
            f"run '{run_id}'",
            self.client.get_run,
            run_id,
            missing=f"run '{run_id}' not found in {redact(self.tracking_uri)}",
        )

    def _logged_model_location(self, run: Any, name: str) -> str | None:
        """Artifact location of the model named ``name`` that ``run`` logged (MLflow 3)."""
        if not hasattr(self.client, "search_logged_models"):
            return None  # MLflow 2 logs a model as artifacts of its run, which the caller tried first
        run_id = run.info.run_id
        found = self._call(
            f"models logged by run '{run_id}'",
            lambda: self.client.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
            ),
        )
        return str(found[0].artifact_location) if found else None

    def _resolve_local(self, uri: str) -> ModelRef:
        path = Path(uri).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"model file '{uri}' does not exist")
        signature = None
        name = path.resolve().name if path.is_dir() else path.stem  # a model folder is named by itself
        if path.is_dir():
            path, signature = _read_mlmodel(path, uri)
        sha, blob = self.store.put(path, uri, self.max_bytes)
        return ModelRef(uri, name, None, sha, blob, str(path.resolve()), signature)

    def _resolve_remote_file(self, uri: str) -> ModelRef:
        """An ONNX file on an object store or web server: fetched, hashed, cached by content."""
        shown = storage.redact(uri)
        make_folder(self.cache_dir)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".download-") as tmp:
            local = Path(tmp) / "model.onnx"
            storage.download(uri, local, f"model '{shown}'")
            sha, blob = self.store.put(local, shown, self.max_bytes)
        name = shown.partition("?")[0].rstrip("/").rsplit("/", 1)[-1].removesuffix(".onnx") or "model"
        return ModelRef(shown, name, None, sha, blob, shown, None)

    # -- cache ----------------------------------------------------------------------------------

    def _blob(self, sha: str) -> Path:
        return self.store.path(sha)

    def _ref_file(self, key: str) -> Path:
        return self.cache_dir / "refs" / f"{key}.json"

    def _cached(self, key: str) -> tuple[str, dict[str, Any] | None] | None:
        try:
            entry = json.loads(self._ref_file(key).read_text())
        except (OSError, ValueError):
            return None
        if not self._blob(entry["sha256"]).is_file():
            return None
        return entry["sha256"], entry.get("signature")

    def _download(
        self,
        uri: str,
        artifact_uri: str,
        name: str,
        version: str | None,
        pinned: str,
        key: str | None,
    ) -> ModelRef:
        import mlflow.artifacts

        if artifact_uri.startswith("mlflow-artifacts:"):
            # A server's proxied artifact store. MLflow 2 resolves this scheme against the
            # process-wide tracking URI, not the one passed in: resolve it against ours here.
            from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

            artifact_uri = MlflowArtifactsRepository.resolve_uri(artifact_uri, self.tracking_uri)
        make_folder(self.cache_dir)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".download-") as tmp:
            local = self._call(
                f"artifacts of model '{pinned}'",
                lambda: mlflow.artifacts.download_artifacts(
                    artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=self.tracking_uri
                ),
                missing=f"model '{pinned}' not found: nothing at {artifact_uri}",
            )
            local_path = Path(local)
            if local_path.is_dir():
                onnx_file, signature = _read_mlmodel(local_path, uri)
            elif local_path.suffix == ".onnx":
                onnx_file, signature = local_path, None
            else:
                raise ModelLoadError(f"model '{uri}': artifact {local_path.name} is not an ONNX model")
            sha, blob = self.store.put(onnx_file, uri, self.max_bytes)
        if key is not None:
            self._write_ref(key, {"sha256": sha, "signature": signature, "pinned_uri": pinned})
        return ModelRef(uri, name, version, sha, blob, pinned, signature)

    def _write_ref(self, key: str, entry: dict[str, Any]) -> None:
        ref = self._ref_file(key)
        make_folder(ref.parent)
        fd, tmp = tempfile.mkstemp(dir=ref.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            json.dump(entry, fh)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, ref)
