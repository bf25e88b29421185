"""Redaction of secrets from anything this package prints or stores.

A tracking URI may carry a password (``http://user:secret@host``) and a registry or proxy
may echo a request's ``Authorization`` header in its answer. Every error message, log
line, manifest, Parquet metadata entry and traceback passes through :func:`redact` before
it leaves the process, so a secret given to the job is never written anywhere by it.

This module sits at the bottom of the package (it imports nothing of ours), so that the
errors, the registry, the job and the CLI's log formatter can all use the one function.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"

# scheme://userinfo@host: the userinfo (user, or user:password) goes, the host stays. The userinfo
# ends at the last '@' before the path: a password may itself contain '@' or ':'.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s'\"<>]*)@")
# Credentials in headers, query strings or JSON that a server echoed back.
# scheme://user:password@host where the password holds a '/', as AWS secret keys often do.
_SLASHED_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^@\s'\"<>:/]*:[^@\s'\"<>]*@")
_AUTH_HEADER = re.compile(r"(?i)\b(?P<kind>bearer|basic|token|digest)(?P<sep>\s+)(?P<value>[A-Za-z0-9._~+/=-]{4,})")
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>\b(?:authorization|password|passwd|secret|token|access_token|api[_-]?key|"
    r"x-api-key|sig|signature|aws_secret_access_key|client_secret)\b)"
    r"(?P<sep>['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\s'\",&;}]+)"
)


def redact(text: str) -> str:
    """``text`` with URI userinfo and credential-looking values replaced by ``***``.

    >>> redact("http://user:s3cret@mlflow:5000/api")
    'http://***@mlflow:5000/api'
    """
    if not text:
        return text
    text = _SLASHED_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['kind']}{m['sep']}{MASK}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    # Library errors can quote a request (a SAS token in a URL, a key in a connection string):
    # matching the credential values themselves is the one check that does not depend on wording.
    for secret in _secret_values():
        text = text.replace(secret, MASK)
    return text


# Variables whose values must never appear in output, checked by value.
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def _secret_values() -> list[str]:
    values = [os.environ.get(name, "") for name in _SECRET_ENV]
    for item in os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
            values.append(value.strip())
    # Short values would blank out ordinary words; real keys and tokens are long.
    return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)


def redact_data(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)) if isinstance(k, str) else k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def short(text: str, limit: int = 160) -> str:
    """The first line of ``text``, redacted and cut to ``limit`` characters (a server's message)."""
    lines = str(text).strip().splitlines()
    first = redact(lines[0].strip()) if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."
