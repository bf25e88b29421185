"""MLflow's registry errors as ours, classified by error code, HTTP status and exception class.

MLflow reports a JSON error from a server as ``RestException`` with the server's
``error_code``; a non-JSON answer as ``MlflowException`` whose ``error_code`` comes from the
HTTP status; a refused connection or a timeout as ``MlflowException`` chained to the
``requests`` exception. Those three facts decide the class (and so the exit code); a
message text is never parsed. Where they leave the answer open (a ``200`` HTML page, a
redirect to a login page, a ``500`` without JSON all arrive as ``INTERNAL_ERROR``), the
registry is asked once more, with redirects off, and the status and content type of that
answer decide.

A server's own message is shown at most as a short, redacted first line: a proxy may
echo the request, ``Authorization`` header included.
"""

from __future__ import annotations

import os
from typing import Any

from scoring.errors import (
    AuthenticationError,
    ModelNotFoundError,
    NotARegistryError,
    RegistryError,
    RegistryUnavailableError,
    ScoringError,
)
from scoring.redact import redact, short

NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})
AUTH = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED", "UNAUTHORIZED"})
UNAVAILABLE = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL_ERROR"}
)
_PROBE = "/api/2.0/mlflow/registered-models/search?max_results=1"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during, innermost last."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _network_failure(exc: BaseException) -> BaseException | None:
    """The refused connection, timeout or exhausted retry behind ``exc``, if any."""
    import requests

    for link in _chain(exc):
        if isinstance(link, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return link
        if isinstance(link, requests.exceptions.RetryError):  # 5xx answered until retries ran out
            return link
        if isinstance(link, OSError) and not isinstance(link, requests.exceptions.RequestException):
            return link
    return None


def _status(exc: Any) -> int | None:
    getter = getattr(exc, "get_http_status_code", None)
    try:
        return int(getter()) if getter is not None else None
    except (TypeError, ValueError):
        return None


def translate(exc: BaseException, what: str, uri: str, missing: str | None, timeout: float) -> ScoringError:
    """The typed error for an exception MLflow raised while looking up ``what`` at ``uri``.

    Args:
        exc: What MLflow raised (an ``MlflowException`` or a ``requests``/``OSError`` failure).
        what: The object looked up, for the message (``"model 'bc'"``).
        uri: The registry's URI (shown redacted).
        missing: The message for a "does not exist" answer; default: ``"<what> not found"``.
        timeout: Seconds for the one diagnostic request, if one is needed.
    """
    shown = redact(uri)
    code = str(getattr(exc, "error_code", "") or "")
    rest = hasattr(exc, "json")  # RestException: the server answered in MLflow's JSON
    status = _status(exc)
    network = _network_failure(exc)
    if network is not None:
        return RegistryUnavailableError(
            f"model registry at {shown} is unreachable while looking up {what} ({type(network).__name__}); retry later"
        )
    if code in NOT_FOUND:
        return ModelNotFoundError(missing or f"{what} not found in {shown}")
    if code in AUTH:
        return _auth_error(what, shown, status or (401 if code != "PERMISSION_DENIED" else 403), code)
    remote = uri.startswith(("http://", "https://"))
    if remote and not rest and code in ("INTERNAL_ERROR", "ENDPOINT_NOT_FOUND", "BAD_REQUEST", ""):
        diagnosed = probe(uri, what, timeout)
        if diagnosed is not None:
            return diagnosed
    if code in UNAVAILABLE and remote:
        return RegistryUnavailableError(
            f"model registry at {shown} failed while looking up {what}: {code} (HTTP {status or 500}); retry later"
        )
    message = short(getattr(exc, "message", "") or "", 120) if rest else ""
    detail = (
        f"{code or type(exc).__name__}" + (f" (HTTP {status})" if status else "") + (f": {message}" if message else "")
    )
    return RegistryError(f"model registry at {shown} refused {what}: {detail}")


def _auth_error(what: str, shown: str, status: int, code: str = "") -> AuthenticationError:
    reason = code or ("UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED")
    fix = (
        "check the credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)"
        if status == 401
        else "the credentials are valid but lack permission on it"
    )
    return AuthenticationError(f"model registry at {shown} refused {what}: HTTP {status} {reason}; {fix}")


def _credentials() -> tuple[dict[str, str], tuple[str, str] | None]:
    """The headers and basic auth MLflow would send, from MLflow's own variables."""
    headers = {"Accept": "application/json"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return headers, (user, password) if user and password else None


def probe(uri: str, what: str, timeout: float) -> ScoringError | None:
    """Ask ``uri`` once, redirects off, what it is; None when it answers as an MLflow registry."""
    import requests

    shown = redact(uri)
    headers, auth = _credentials()
    try:
        response = requests.get(
            uri.rstrip("/") + _PROBE, headers=headers, auth=auth, allow_redirects=False, timeout=timeout
        )
    except requests.exceptions.RequestException as exc:
        return RegistryUnavailableError(
            f"model registry at {shown} is unreachable while looking up {what} ({type(exc).__name__}); retry later"
        )
    status = response.status_code
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if status in (401, 403):
        return _auth_error(what, shown, status)
    if 300 <= status < 400:
        return NotARegistryError(
            f"{shown} is not an MLflow registry: it redirects (HTTP {status}, to a login page?); check the tracking URI"
        )
    if status >= 500:
        return RegistryUnavailableError(
            f"model registry at {shown} failed while looking up {what}: HTTP {status}; retry later"
        )
    if kind != "application/json":
        return NotARegistryError(
            f"{shown} is not an MLflow registry: it answered HTTP {status} with {kind or 'no content type'}; "
            "check the tracking URI"
        )
    return None
