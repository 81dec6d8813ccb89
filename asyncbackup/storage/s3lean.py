"""The lean path of the S3 store: chunk PUTs and GETs signed here, sent on our own aiohttp session.

Through aiobotocore, one small PUT costs about 3.5 ms of CPU: the endpoint ruleset resolved per
call, the user agent rebuilt, the request serialized and the answer parsed by the service model.
Chunk PUTs and GETs need none of it: their URL, headers and answers never change shape. So the
store asks botocore once, at open, where a request for this bucket goes (a presigned URL: the
endpoint, the addressing style and the signing region exactly as botocore resolves them), and then
builds each chunk request itself, signed by botocore's own SigV4 signer (``S3SigV4Auth``) with the
derived signing key cached for the day (``benchmarks/signers.py`` measures the choice).

What stays botocore's: the credentials (the chain, refreshed by botocore when they near their
expiry: this path asks for them before every request), listing, the MANIFEST's create-only
write, deletes and anything rare. Errors leave as botocore's own exception types
(``ClientError`` built from the S3 error document), so ``s3._mapped_errors`` stays the one
place that decides what a retry can fix. aiohttp's silent resend of a request on a reset
connection is off, as on the botocore session: our backoff is the only retry layer.
"""

from __future__ import annotations

import hmac
import os
import ssl
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from hashlib import sha256
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import botocore.exceptions
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.httpsession import DEFAULT_CA_BUNDLE
from yarl import URL

from asyncbackup.storage.base import within_piece_size
from asyncbackup.storage.options import StoreOptions
from asyncbackup.storage.uncopied import UncopiedBody

READ_PIECE = 1024 * 1024
"""Bodies are read in pieces of this size: a stalled body is noticed between pieces."""

ERROR_BODY_LIMIT = 64 * 1024
"""An error document is a few hundred bytes; more than this is not one."""

USER_AGENT = "asyncbackup (lean path)"


class _UnsignedPayload:
    """What ``S3SigV4Auth`` reads from a client config: sign ``UNSIGNED-PAYLOAD``, never hash the
    body. The bytes are covered by the ``x-amz-checksum-sha256`` header, which is signed, and
    which the server checks against the body."""

    s3 = {"payload_signing_enabled": False}  # noqa: RUF012 - read-only, as botocore reads it


class CachedKeySigV4Auth(S3SigV4Auth):
    """botocore's S3 signer, with the signing key derived once per day and secret.

    SigV4's key is four chained HMACs of the secret, the date, the region and the service: the
    same all day for one secret. botocore derives it again for every request.
    """

    def __init__(self, credentials: ReadOnlyCredentials, service_name: str, region_name: str):
        super().__init__(credentials, service_name, region_name)
        self._scope = (region_name, service_name)
        self._key_date = ""
        self._key = b""

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        date: str = request.context["timestamp"][0:8]
        if date != self._key_date:
            key = f"AWS4{self.credentials.secret_key}".encode()
            for part in (date, *self._scope, "aws4_request"):
                key = hmac.new(key, part.encode(), sha256).digest()
            self._key, self._key_date = key, date
        return hmac.new(self._key, string_to_sign.encode(), sha256).hexdigest()


class Target:
    """Where this bucket's objects are, as botocore resolved it from one presigned URL."""

    def __init__(self, presigned_url: str, region: str) -> None:
        parts = urlsplit(presigned_url)
        if not parts.path.endswith("/k"):
            raise ValueError(f"unexpected presigned URL {presigned_url!r}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        self.base_path = parts.path[:-1]  # "/bucket/" (path style) or "/" (virtual host)
        # The signing scope botocore chose (X-Amz-Credential=KEY/DATE/REGION/SERVICE/...).
        credential = parse_qs(parts.query).get("X-Amz-Credential", [""])[0].split("/")
        self.region = credential[2] if len(credential) == 5 else region
        self.service = credential[3] if len(credential) == 5 else "s3"

    def url(self, key: str) -> str:
        return self.origin + self.base_path + quote(key, safe="/~")


class LeanRequests:
    """Signed chunk PUTs and GETs on one aiohttp session, sized like the botocore client's pool."""

    def __init__(self, target: Target, credentials: Any, options: StoreOptions) -> None:
        self.target = target
        self._credentials = credentials  # botocore's (Aio)Credentials: refreshed by botocore
        self._signed_for: ReadOnlyCredentials | None = None
        self._auth: CachedKeySigV4Auth | None = None
        tls: ssl.SSLContext | bool = True
        if target.origin.startswith("https"):  # botocore's CA bundle, as its own client uses
            tls = ssl.create_default_context(
                cafile=os.environ.get("AWS_CA_BUNDLE") or DEFAULT_CA_BUNDLE
            )
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=options.max_connections, ssl=tls),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=options.connect_timeout, sock_read=options.read_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("Content-Type",),
        )
        # aiohttp resends an idempotent request once, silently, on a reset connection: off, so
        # every fault reaches the retry layer and is counted (see s3._NoResendSession).
        self.session._retry_connection = False

    async def put(self, key: str, data: bytes, checksum: str, headers: Mapping[str, str]) -> None:
        """PUT ``data`` under ``key`` (the full key), with its SHA-256 (base64) as the checksum.

        Raises:
            botocore.exceptions.ClientError: the server answered with an error.
            aiohttp.ClientError, TimeoutError: the request or its answer was lost.
        """
        url = self.target.url(key)
        checked = {"x-amz-sdk-checksum-algorithm": "SHA256", "x-amz-checksum-sha256": checksum}
        signed = await self._signed("PUT", url, {**checked, **headers})
        # Read in pieces from a BytesIO that shares ``data``: never copied whole (uncopied.py).
        body = UncopiedBody(data)
        async with self.session.put(URL(url, encoded=True), data=body, headers=signed) as answer:
            if answer.status != 200:
                raise await _client_error(answer, "PutObject")
            await answer.read()  # a few bytes; the connection goes back to the pool

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key`` (the full key).

        Raises:
            botocore.exceptions.ClientError: the server answered with an error (NoSuchKey...).
            aiohttp.ClientError, TimeoutError: the request or its answer was lost or cut short.
        """
        async with self._get_answer(key) as answer:
            pieces = [piece async for piece in answer.content.iter_chunked(READ_PIECE)]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        """The bytes stored under ``key`` (the full key), a piece at a time as they arrive.

        Raises:
            botocore.exceptions.ClientError: the server answered with an error (NoSuchKey...).
            aiohttp.ClientError, TimeoutError: the request or its answer was lost or cut short.
        """
        async with self._get_answer(key) as answer:
            # Each piece as the connection delivered it (asyncio reads at most 256 KiB at a
            # time): iter_chunks hands over aiohttp's buffers one by one, where iter_any joins
            # what is buffered (a copy: 0.3 s of CPU in a 512 MiB restore).
            async for received, _ in answer.content.iter_chunks():
                for piece in within_piece_size(received):
                    yield piece

    @asynccontextmanager
    async def _get_answer(self, key: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """A signed GET of ``key`` whose answer is a 200, its body unread; the connection goes
        back to the pool when the block ends.

        Raises:
            botocore.exceptions.ClientError: the server answered with an error (NoSuchKey...).
            aiohttp.ClientError, TimeoutError: the request was lost.
        """
        url = self.target.url(key)
        signed = await self._signed("GET", url, {})
        async with self.session.get(URL(url, encoded=True), headers=signed) as answer:
            if answer.status != 200:
                raise await _client_error(answer, "GetObject")
            yield answer

    async def _signed(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        # Asked every time: botocore refreshes credentials that near their expiry here, and
        # returns the same frozen tuple until then.
        frozen: ReadOnlyCredentials = await self._credentials.get_frozen_credentials()
        if self._auth is None or frozen != self._signed_for:
            self._auth = CachedKeySigV4Auth(frozen, self.target.service, self.target.region)
            self._signed_for = frozen
        headers["Host"] = self.target.host
        headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        request = AWSRequest(method=method, url=url, headers=headers)
        request.context["client_config"] = _UnsignedPayload
        self._auth.add_auth(request)
        signed = dict(request.headers.items())
        signed["User-Agent"] = USER_AGENT
        return signed

    def connections_in_use(self) -> int:
        """Connections taken from the pool and not given back (tests check for leaks)."""
        connector: Any = self.session.connector
        return len(connector._acquired) if connector is not None else 0

    async def aclose(self) -> None:
        await self.session.close()


async def _client_error(answer: aiohttp.ClientResponse, operation: str) -> Exception:
    """The answer as the ``ClientError`` botocore would raise, for ``s3._mapped_errors``."""
    body = await answer.content.read(ERROR_BODY_LIMIT)
    code, message = "", ""
    if body:
        try:
            root = ElementTree.fromstring(body)
            code = root.findtext("Code") or ""
            message = root.findtext("Message") or ""
        except ElementTree.ParseError:
            message = body[:200].decode(errors="replace")
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": answer.status},
    }
    return botocore.exceptions.ClientError(response, operation)
