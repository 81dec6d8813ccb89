"""A store in an S3 bucket (or any S3-compatible server), on aiobotocore and a lean path.

One client per store, with a connection pool as large as the engine's concurrency and no retry
below ours: botocore's retries are off, and so is aiohttp's silent resend of a request whose
connection was reset (``_NoResendSession``). The engine's backoff is the only retry layer, so a
throttled store sees jittered retries and every retry is counted. The hot requests, chunk PUTs
and GETs, take the lean path (``s3lean.py``): signed by botocore's signer, sent on our own
aiohttp session, without botocore's per-request machinery; the client keeps listing, the
MANIFEST's create-only write, deletes and the rare calls. Each chunk PUT carries its SHA-256, so
the server refuses bytes damaged on the way, sent without a copy (``UncopiedBody``) and without
hashing it again on the event loop to sign it. Every exception of either path becomes a
``StorageError`` in ``_mapped_errors``, the one place that decides what a retry can fix.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncGenerator, Iterator
from contextlib import AsyncExitStack, aclosing, contextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session

from asyncbackup.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from asyncbackup.storage.base import ObjectInfo, ObjectPage, Storage
from asyncbackup.storage.options import StoreOptions
from asyncbackup.storage.s3lean import LeanRequests, Target
from asyncbackup.storage.uncopied import UncopiedBody
from asyncbackup.threads import to_thread

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import PaginatorConfigTypeDef

PAGE_SIZE = 1000
"""Keys per listing page: S3's own maximum."""

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "ConditionalRequestConflict",  # S3's advice: retry the conditional write
        "BadDigest",  # the bytes were damaged on the way: sending them again fixes it
        "XAmzContentSHA256Mismatch",
    }
)

_WHAT_TO_FIX = {
    "NoSuchBucket": "the bucket does not exist: create it, or check its name, region and endpoint",
    "AccessDenied": (
        "access denied: the credentials need s3:PutObject, s3:GetObject, s3:ListBucket "
        "and s3:DeleteObject on this bucket"
    ),
    "AllAccessDisabled": "all access to this bucket is disabled: check the bucket's policy",
    "InvalidAccessKeyId": (
        "the server does not know this access key: check AWS_ACCESS_KEY_ID or the profile, "
        "and that the endpoint is the one the keys belong to"
    ),
    "SignatureDoesNotMatch": (
        "the request signature does not match: check AWS_SECRET_ACCESS_KEY (and the region)"
    ),
    "ExpiredToken": "the session token has expired: refresh the credentials",
    "InvalidToken": "the session token is invalid: check AWS_SESSION_TOKEN",
    "AuthorizationHeaderMalformed": "the region is wrong for this bucket: set --region",
    "PermanentRedirect": "the bucket is in another region: set --region to the bucket's region",
    "InvalidBucketName": "the bucket name is not valid for S3",
}


class S3Storage(Storage):
    """Objects in ``bucket`` under ``prefix`` (empty, or ending in '/').

    The client is created on first use, inside the running loop, and closed by ``aclose``.
    Endpoint, region and credentials follow the AWS chain unless ``options`` sets them.
    """

    streams = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        options: StoreOptions | None = None,
        *,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.options = options if options is not None else StoreOptions()
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        self.max_connections = self.options.max_connections
        self.page_size = page_size
        self._client: S3Client | None = None
        self._lean: LeanRequests | None = None
        self._client_lock = asyncio.Lock()
        self._exit_stack = AsyncExitStack()
        self._encryption: dict[str, Any] = {}
        if self.options.server_side_encryption is not None:
            self._encryption["ServerSideEncryption"] = self.options.server_side_encryption
        if self.options.kms_key_id is not None:
            self._encryption["SSEKMSKeyId"] = self.options.kms_key_id
        # The same settings as headers of the lean path's chunk PUTs (signed, as x-amz-* must be).
        self._lean_headers: dict[str, str] = {}
        if self.options.storage_class is not None:
            self._lean_headers["x-amz-storage-class"] = self.options.storage_class
        if self.options.server_side_encryption is not None:
            self._lean_headers["x-amz-server-side-encryption"] = self.options.server_side_encryption
        if self.options.kms_key_id is not None:
            self._lean_headers["x-amz-server-side-encryption-aws-kms-key-id"] = (
                self.options.kms_key_id
            )

    async def _s3(self) -> S3Client:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client, self._lean = await self._open_client()
        return self._client

    async def _lean_path(self) -> LeanRequests:
        if self._lean is None:
            await self._s3()
            assert self._lean is not None
        return self._lean

    async def _open_client(self) -> tuple[S3Client, LeanRequests]:
        options = self.options
        config = AioConfig(
            max_pool_connections=options.max_connections,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            retries={"total_max_attempts": 1},  # our backoff is the only retry layer
            # Over plain http, botocore would sign each body by hashing it on the event loop;
            # the ChecksumSHA256 sent with every put already covers the bytes, off the loop.
            s3={"addressing_style": options.addressing_style, "payload_signing_enabled": False},
            # Servers that do not echo checksums (rclone, some S3-compatibles) must still work;
            # restore checks every chunk's SHA-256 itself.
            response_checksum_validation="when_required",
            http_session_cls=_NoResendSession,
        )
        session = get_session()
        with _mapped_errors(self.url, ""):
            client: S3Client = await self._exit_stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=options.endpoint_url,
                    region_name=options.region,
                    config=config,
                )
            )
            # The client and the lean path share the credentials object, and so its refreshes.
            credentials = await session.get_credentials()
            if credentials is None:
                raise botocore.exceptions.NoCredentialsError()
            # botocore resolves where a request to this bucket goes (endpoint, addressing
            # style, signing region) once, here, instead of once per request.
            presigned = await client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": "k"}, ExpiresIn=60
            )
        lean = LeanRequests(Target(presigned, client.meta.region_name), credentials, options)
        self._exit_stack.push_async_callback(lean.aclose)
        return client, lean

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        if digest is None:
            digest = await to_thread(_sha256_hex, data)
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        if overwrite:  # a chunk: the lean path, in the chunks' storage class
            lean = await self._lean_path()
            with _mapped_errors(self.url, key):
                await lean.put(self.prefix + key, data, checksum, self._lean_headers)
            return
        # Create-only (the MANIFEST): rare, through botocore. AWS, MinIO and moto refuse the put
        # itself (If-None-Match); some S3-compatible servers ignore that header (rclone serve s3
        # 1.75 does), so look first as well.
        s3 = await self._s3()
        if await self._exists(key):
            raise ObjectExistsError(f"{self.url}{key} exists already")
        with _mapped_errors(self.url, key):
            await s3.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=UncopiedBody(data),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                IfNoneMatch="*",
                **self._encryption,
            )

    async def _exists(self, key: str) -> bool:
        s3 = await self._s3()
        try:
            with _mapped_errors(self.url, key):
                await s3.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ObjectNotFoundError:
            return False
        return True

    async def get(self, key: str) -> bytes:
        lean = await self._lean_path()
        with _mapped_errors(self.url, key):
            return await lean.get(self.prefix + key)

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        lean = await self._lean_path()
        with _mapped_errors(self.url, key):
            async with aclosing(lean.stream(self.prefix + key)) as pieces:
                async for piece in pieces:
                    yield piece

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        s3 = await self._s3()
        wanted = f"bytes={start}-{start + length - 1}"
        with _mapped_errors(self.url, key):
            response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + key, Range=wanted)
            # A rare, small read (a MANIFEST's head): botocore's path, not the lean one.
            async with response["Body"] as body:
                return await body.read()

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        s3 = await self._s3()
        paginator = s3.get_paginator("list_objects_v2")
        # One page per call, resumed from the paginator's token, so a failure retries one page
        # instead of restarting a listing of a million chunks.
        size = self.page_size
        pagination: PaginatorConfigTypeDef = {"PageSize": size, "MaxItems": size}
        if token is not None:
            pagination["StartingToken"] = token
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig=pagination
        )
        objects: list[ObjectInfo] = []
        start = len(self.prefix)
        with _mapped_errors(self.url, prefix):
            async for page in pages:
                objects.extend(
                    ObjectInfo(item["Key"][start:], item["Size"], item["LastModified"].timestamp())
                    for item in page.get("Contents", [])
                )
        next_token = pages.resume_token
        return objects, next_token if isinstance(next_token, str) and next_token else None

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        with _mapped_errors(self.url, key):
            await s3.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def connections_in_use(self) -> int:
        """Connections taken from either pool and not given back (tests check for leaks)."""
        if self._client is None or self._lean is None:
            return 0
        client: Any = self._client  # aiobotocore's internals: only tests ask
        sessions = client._endpoint.http_session._sessions.values()
        held = sum(len(session.connector._acquired) for session in sessions)
        return held + self._lean.connections_in_use()

    async def aclose(self) -> None:
        self._client = None
        self._lean = None
        await self._exit_stack.aclose()


class _NoResendSession(AIOHTTPSession):
    """aiobotocore's HTTP session, with aiohttp's own retry off.

    aiohttp resends a GET, HEAD, PUT or DELETE once, at once and uncounted, when the connection
    is reset or the server disconnects: through a fault-injecting proxy, 17 of 18 resets never
    reached our retry layer. There is no public switch: the attribute is private to aiohttp.
    """

    async def _get_session(self, proxy_url: Any) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession = await super()._get_session(proxy_url)  # type: ignore[misc]
        session._retry_connection = False
        return session


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _mapped_errors(url: str, key: str) -> Iterator[None]:
    """Turn what aiobotocore and aiohttp raise into a transient or permanent ``StorageError``."""
    where = url + key
    try:
        yield
    except StorageError:
        raise
    except botocore.exceptions.ClientError as exc:
        raise _from_client_error(exc, where) from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise PermanentStorageError(
            f"{url}: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run where an instance role is available"
        ) from exc
    except botocore.exceptions.PartialCredentialsError as exc:
        raise PermanentStorageError(f"{url}: incomplete AWS credentials: {exc}") from exc
    except (
        botocore.exceptions.ConnectionError,  # connect and read timeouts, resets, refused
        botocore.exceptions.HTTPClientError,
        botocore.exceptions.IncompleteReadError,
        botocore.exceptions.ResponseStreamingError,
        botocore.exceptions.FlexibleChecksumError,
        aiohttp.ClientError,  # a body cut mid-read arrives from aiohttp itself
        TimeoutError,
        ConnectionError,
    ) as exc:
        raise TransientStorageError(f"{where}: {type(exc).__name__}: {exc}") from exc
    except botocore.exceptions.ParamValidationError as exc:
        raise PermanentStorageError(f"{where}: invalid request: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise PermanentStorageError(f"{where}: {type(exc).__name__}: {exc}") from exc


def _from_client_error(exc: botocore.exceptions.ClientError, where: str) -> StorageError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    said = error.get("Message") or code or f"HTTP {status}"
    if code in ("NoSuchKey", "NotFound") or (status == 404 and code != "NoSuchBucket"):
        return ObjectNotFoundError(f"{where}: no such object")
    if code == "PreconditionFailed" or status == 412:
        return ObjectExistsError(f"{where} exists already")
    if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
        return TransientStorageError(f"{where}: {code or status}: {said}")
    fix = _WHAT_TO_FIX.get(code)
    if fix is None and status in (401, 403):
        fix = "the server refused the credentials: check them and the bucket's policy"
    return PermanentStorageError(f"{where}: {code or status}: {fix or said}")
