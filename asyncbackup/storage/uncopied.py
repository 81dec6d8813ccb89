"""A request body that the HTTP stack reads without ever copying it whole."""

from __future__ import annotations

import io


class UncopiedBody(io.BytesIO):
    """``data`` as a file the SDKs send in pieces, never copied whole.

    botocore and gcloud-aio wrap bytes in a plain BytesIO, and aiohttp sizes a BytesIO through
    ``getbuffer()``, which copies the bytes it shares (the buffer it exports is writable): one
    more chunk in memory for every upload in flight, 32 MiB over the memory bound at
    concurrency 4 on S3. Bytes passed as they are fare worse: aiohttp joins them to the headers,
    and the transport buffers whatever the socket has not taken yet. Read in pieces from a
    BytesIO that shares them, they cost neither.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)  # shares ``data`` until written to, which nothing does
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)
