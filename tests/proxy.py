"""A fault-injecting HTTP proxy between a client and a real server, all on 127.0.0.1.

It forwards each request on its own upstream connection and relays the answer with a
Content-Length, so it can cut, delay or replace any answer exactly. ``rule(n, method, path)``
picks a fault (or ``None``) for the n-th request, from 1; ``injected`` counts what it did, so a
test can compare it with the retries the engine counted. Faults are those of a real network and
a throttled store:

    status       answer ``status`` with ``body``, never forwarding (503 SlowDown, 500, 429...)
    reset        reset the connection before the request reaches the server
    reset_late   forward the request, then reset instead of answering: the server acted
    cut_request  send the server the head and half the body, then reset both connections
    cut_body     forward, then send the headers and half the body, and close
    stall_body   forward, then send the headers and half the body, and nothing more
    flip_body    forward, then send the whole answer with one byte of its body flipped (a
                 body damaged on the way, which no length check notices)
    hang         forward nothing and never answer (until the proxy stops)
    latency      wait ``seconds`` before forwarding (the request itself succeeds)

Rules are plain functions; the builders below make the usual ones and combine them. The
benchmarks use the same proxy as a delay line.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def s3_error_body(code: str, message: str) -> bytes:
    """An S3 error document, as AWS sends it."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()


SLOW_DOWN = s3_error_body("SlowDown", "Please reduce your request rate.")


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 503
    body: bytes = SLOW_DOWN
    content_type: str = "application/xml"
    seconds: float = 0.0


Rule = Callable[[int, str, str], Fault | None]


def s3_error(status: int, code: str, message: str) -> Fault:
    """An S3 error answer: 503 SlowDown, 500 InternalError, 429 TooManyRequests..."""
    return Fault("status", status, s3_error_body(code, message))


def gcs_error(status: int, message: str) -> Fault:
    """A Google API error answer, as GCS sends it."""
    body = json.dumps({"error": {"code": status, "message": message}}).encode()
    return Fault("status", status, body, "application/json")


S3_THROTTLES = (
    s3_error(503, "SlowDown", "Please reduce your request rate."),
    s3_error(500, "InternalError", "We encountered an internal error. Please try again."),
    s3_error(429, "TooManyRequests", "Please slow down."),
)
GCS_THROTTLES = (
    gcs_error(503, "Backend Error"),
    gcs_error(500, "Internal Error"),
    gcs_error(429, "The rate of change requests to the object is too high."),
)
WIRE_FAULTS = (Fault("reset"), Fault("reset_late"), Fault("cut_body"))


def random_faults(rate: float, faults: Sequence[Fault], *, seed: int) -> Rule:
    """Each request fails with probability ``rate``, in one of ``faults`` picked at random; the
    same seed and the same requests give the same faults."""
    rng = random.Random(seed)

    def rule(n: int, method: str, path: str) -> Fault | None:
        return rng.choice(faults) if rng.random() < rate else None

    return rule


def first_times(times: int, fault: Fault, *, method: str = "", path: str = "") -> Rule:
    """``fault`` on the first ``times`` requests whose method is ``method`` and whose path
    contains ``path`` (either may be empty: any): "this key, the first N times"."""
    left = times

    def rule(n: int, request_method: str, request_path: str) -> Fault | None:
        nonlocal left
        if left and request_method.startswith(method) and path in request_path:
            left -= 1
            return fault
        return None

    return rule


def always(fault: Fault) -> Rule:
    """A store that is down: every request gets ``fault``."""
    return lambda n, method, path: fault


def delay(seconds: float) -> Rule:
    """A delay line: every request waits ``seconds``, and nothing limits how many at once."""
    return always(Fault("latency", seconds=seconds))


def first_of(*rules: Rule) -> Rule:
    """Asks ``rules`` in order and takes the first fault; a request one rule faults is not
    shown to the later ones, so ``first_times`` counts only requests it could fault."""

    def rule(n: int, method: str, path: str) -> Fault | None:
        return next((f for r in rules if (f := r(n, method, path)) is not None), None)

    return rule


class FaultProxy:
    """Listens on 127.0.0.1 (``url``) and forwards to ``upstream_port`` on 127.0.0.1."""

    def __init__(self, upstream_port: int, rule: Rule) -> None:
        self.upstream_port = upstream_port
        self.rule = rule
        self.requests: list[tuple[str, str]] = []
        self.heads: list[bytes] = []  # each request's start line and headers, as received
        self.injected: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while request := await _read_message(reader, is_request=True, client=writer):
                head, body = request
                method, path = head.split(b" ", 2)[:2]
                self.requests.append((method.decode(), path.decode()))
                self.heads.append(head)
                fault = self.rule(len(self.requests), method.decode(), path.decode())
                if not await self._answer(fault, head, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(
        self, fault: Fault | None, head: bytes, body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the client connection is done with."""
        kind = fault.kind if fault is not None else None
        if kind not in (None, "latency", "cut_body", "stall_body", "flip_body"):
            self.injected[kind] += 1  # the others are counted once the answer says what they did
        if kind in ("reset", "cut_request"):
            if kind == "cut_request":
                await self._send_half(head, body)
            _reset(writer)
            return False
        if kind == "hang":
            await self._stopping.wait()
            return False
        if kind == "status" and fault is not None:
            writer.write(_response(fault.status, fault.body, fault.content_type))
            await writer.drain()
            return True
        if kind == "latency" and fault is not None:
            await asyncio.sleep(fault.seconds)
        status_head, answer = await self._forward(head, body)
        if kind == "reset_late":
            _reset(writer)
            return False
        if kind == "flip_body" and answer:
            self.injected[kind] += 1
            damaged = bytearray(answer)
            damaged[len(damaged) // 2] ^= 0xFF
            writer.write(status_head + bytes(damaged))
            await writer.drain()
            return True
        if kind in ("cut_body", "stall_body", "flip_body"):
            if not answer:  # the answer to a HEAD, or a 204: nothing to cut, so reset instead
                self.injected["reset_late"] += 1
                _reset(writer)
                return False
            self.injected[kind] += 1
            writer.write(status_head + answer[: len(answer) // 2])
            await writer.drain()
            if kind == "stall_body":
                await self._stopping.wait()
            return False
        writer.write(status_head + answer)
        await writer.drain()
        return True

    async def _forward(self, head: bytes, body: bytes) -> tuple[bytes, bytes]:
        """Send one request upstream on a fresh connection; its answer, re-framed."""
        is_head = head.startswith(b"HEAD ")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(_with_length(head, len(body), close=True) + body)
            await writer.drain()
            message = await _read_message(reader, is_request=False, no_body=is_head)
            if message is None:
                raise ConnectionError("the upstream server closed without answering")
        finally:
            writer.close()
        response_head, answer = message
        length = _declared_length(response_head) if is_head else len(answer)
        return _with_length(response_head, length, close=False), answer

    async def _send_half(self, head: bytes, body: bytes) -> None:
        """Announce the whole body to the server, send half of it, and reset: what the server
        sees when a client dies mid-upload."""
        _, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        writer.write(_with_length(head, len(body), close=True) + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.05)  # let the server read what it was sent before the reset
        _reset(writer)


async def _read_message(
    reader: asyncio.StreamReader,
    *,
    is_request: bool,
    no_body: bool = False,
    client: asyncio.StreamWriter | None = None,
) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message: its head (start line and headers, without the blank line) and body;
    None at a clean end of the connection. ``no_body``: the answer to a HEAD."""
    try:
        head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # the blank line after the last chunk (no trailers)
        return head, bytes(body)
    if no_body:
        return head, b""
    if client is not None and headers.get(b"expect", b"").lower() == b"100-continue":
        client.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # aiohttp waits for it to send a body
        await client.drain()
    if b"content-length" in headers:
        return head, await reader.readexactly(int(headers[b"content-length"]))
    if is_request or head.split(b" ", 2)[1] in (b"204", b"304"):
        return head, b""
    return head, await reader.read()  # an answer framed by closing the connection


def _declared_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _with_length(head: bytes, length: int, *, close: bool) -> bytes:
    """``head`` with its framing headers replaced by a Content-Length (and ``Connection: close``).
    ``Expect: 100-continue`` goes too: the whole body is sent at once."""
    drop = {b"content-length", b"transfer-encoding", b"connection", b"expect"}
    lines = head.split(b"\r\n")
    kept = [line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in drop]
    framing = [b"Content-Length: %d" % length] + ([b"Connection: close"] if close else [])
    return b"\r\n".join([lines[0], *kept, *framing]) + b"\r\n\r\n"


def _response(status: int, body: bytes, content_type: str) -> bytes:
    head = b"HTTP/1.1 %d Injected\r\nContent-Type: %s" % (status, content_type.encode())
    return _with_length(head, len(body), close=False) + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed peer or a middlebox does, not a clean FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
