"""What aiohttp, gcloud-aio and the credential loading raise, as ``StorageError``s: the one
place that decides what a retry of a GCS request can fix (``GCSStorage._mapped`` applies it).
"""

from __future__ import annotations

import json
from typing import Literal

import aiohttp
import jwt

from asyncbackup.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)

About = Literal["object", "bucket", "credentials", "metadata"]

REQUEST_ERRORS: tuple[type[Exception], ...] = (
    aiohttp.ClientError,  # connection, payload and HTTP status errors
    TimeoutError,
    json.JSONDecodeError,  # a 2xx reply that is not JSON
)
"""What a request on an object or the bucket may raise: each becomes a ``StorageError``."""

CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    *REQUEST_ERRORS,
    OSError,
    ValueError,
    KeyError,
    jwt.PyJWTError,
)
"""What loading the credentials or fetching a token may raise, a request's errors among them."""

_CREDENTIALS_HINT = (
    "check GOOGLE_APPLICATION_CREDENTIALS (a service account JSON key) or the application "
    "default credentials, and that the account has storage.objects.create, get, list and "
    "delete on the bucket"
)


def storage_error(exc: Exception, url: str, key: str, *, about: About) -> StorageError:
    """What aiohttp, gcloud-aio or the credential loading raised, as a ``StorageError``.

    ``about`` says what failed: a request on an "object" (a 404 means no such object), on the
    "bucket" (put and list: a 404 means no bucket), or getting "credentials" (loading the key,
    fetching a token), from the "metadata" server when no credentials were found.
    """
    where = url + key
    bucket = url.removeprefix("gs://").split("/", 1)[0]
    credentials = about in ("credentials", "metadata")
    if isinstance(exc, aiohttp.InvalidURL):
        return PermanentStorageError(f"{where}: invalid URL: {exc}")
    if about == "metadata" and isinstance(exc, aiohttp.ClientConnectionError | TimeoutError):
        return PermanentStorageError(
            f"{url}: no Google credentials found, and no metadata server to ask "
            f"({type(exc).__name__}): set GOOGLE_APPLICATION_CREDENTIALS to a service account "
            "JSON key, run `gcloud auth application-default login`, or set "
            "STORAGE_EMULATOR_HOST=http://HOST:PORT for an emulator"
        )
    if not isinstance(exc, aiohttp.ClientResponseError):
        if credentials and not isinstance(exc, aiohttp.ClientError | TimeoutError):
            # A missing or unreadable key file, bad JSON, an unusable private key.
            return PermanentStorageError(
                f"{url}: cannot use the Google credentials ({type(exc).__name__}: {exc}): "
                f"{_CREDENTIALS_HINT}"
            )
        # Connection refused or reset, a dropped keep-alive, a body cut short, a timeout, a reply
        # that is not JSON (a proxy's error page): sending the request again may work.
        return TransientStorageError(f"{where}: {type(exc).__name__}: {exc}")
    status = exc.status
    said = _google_message(exc.message)
    if status in (408, 429) or status >= 500:
        return TransientStorageError(f"{where}: HTTP {status}: {said}")
    if credentials or status in (401, 403):
        what = "the token server refused the credentials" if credentials else "access denied"
        return PermanentStorageError(
            f"{where}: {what} (HTTP {status}: {said}): {_CREDENTIALS_HINT}"
        )
    if status == 404 and about == "object":
        return ObjectNotFoundError(f"{url}: no object {key}")
    if status == 404:
        return PermanentStorageError(
            f"{url}: the bucket {bucket!r} does not exist: create it "
            f"(gcloud storage buckets create gs://{bucket}) or check the name in the store URL"
        )
    if status == 412:
        return ObjectExistsError(f"{url}: {key} exists already")
    if status == 400:
        return PermanentStorageError(
            f"{where}: HTTP 400, the request was refused ({said}): check the bucket name "
            "and the key"
        )
    return PermanentStorageError(f"{where}: HTTP {status}: {said}")


def _google_message(text: str) -> str:
    """The ``error.message`` of Google's JSON error body (after gcloud-aio's ``reason: ``)."""
    _, brace, rest = text.partition("{")
    if brace:
        try:
            message = json.loads(brace + rest)["error"]["message"]
            if isinstance(message, str) and message:
                return message
        except (ValueError, KeyError, TypeError):
            pass
    return " ".join(text.split())[:300] or "no details"
