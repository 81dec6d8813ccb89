"""How a job's metrics leave the process while it runs and when it ends: an HTTP ``/metrics``
endpoint and a Pushgateway push. (The textfile is ``Metrics.write_textfile``.)

Both serve the job's own registry, never prometheus-client's global one, and neither blocks the
event loop: the server runs in its own thread, and the blocking calls (binding, shutting down,
pushing) run in worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager, nullcontext
from http.client import HTTPException
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, pushadd_to_gateway, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from asyncbackup.defaults import (  # re-exported
    DEFAULT_METRICS_ADDRESS as DEFAULT_METRICS_ADDRESS,
)
from asyncbackup.defaults import DEFAULT_PUSH_JOB as DEFAULT_PUSH_JOB
from asyncbackup.errors import ConfigError

log = logging.getLogger("asyncbackup")

PUSH_TIMEOUT = 10.0  # seconds; a monitoring outage must not hold a finished job for long


class MetricsServer:
    """Serves ``registry`` on ``http://address:port/metrics`` from a thread, for as long as the
    ``async with`` lasts. Port 0 picks a free port; ``port`` then tells which."""

    def __init__(self, registry: CollectorRegistry, *, port: int, address: str) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port must be between 0 and 65535, not {port}")
        self.registry = registry
        self.address = address
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    async def __aenter__(self) -> Self:
        """Bind and start serving.

        Raises:
            ConfigError: the address cannot be bound (a port in use, an address not of this host).
        """
        try:
            server, thread = await asyncio.to_thread(
                start_http_server, self.port, addr=self.address, registry=self.registry
            )
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            in_use = isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
            why = "is in use" if in_use else f"failed: {exc}"
            raise ConfigError(
                f"cannot serve metrics on {self.address} port {self.port}: binding {why}; "
                "choose another --metrics-port (0 picks a free one) or --metrics-address"
            ) from exc
        self._server, self._thread = server, thread
        self.port = server.server_port
        log.info("serving metrics on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop serving and release the port; the thread is gone when this returns."""
        if self._server is None:
            return
        self._server.shutdown()  # waits for serve_forever to return: up to its 0.5 s poll
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None


def serving(
    registry: CollectorRegistry, *, port: int | None, address: str
) -> AbstractAsyncContextManager[object]:
    """A ``MetricsServer`` of ``registry`` on ``port``, or nothing to do when ``port`` is None."""
    if port is None:
        return nullcontext()
    return MetricsServer(registry, port=port, address=address)


def check_pushgateway_url(url: str) -> str:
    """Return ``url`` if a push can be tried on it: ``http(s)://host[:port][/path]``.

    Raises:
        ConfigError: another scheme, no host, a bad port, or a query or fragment.
    """
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(
            f"--pushgateway {url!r} is not a Pushgateway URL: use http://HOST:PORT "
            "(e.g. http://127.0.0.1:9091)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"--pushgateway {url!r}: a Pushgateway URL has no query or fragment")
    return url


class _WithSamples(Collector):
    """The metrics of ``registry`` that have a sample: a failed job's push then names no
    ``backup_last_success_timestamp_seconds`` at all, so the Pushgateway keeps the last one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return [family for family in self._registry.collect() if family.samples]


async def push(
    registry: CollectorRegistry, url: str, *, job: str, grouping_key: dict[str, str]
) -> bool:
    """Push every metric of ``registry`` that has a sample to the Pushgateway at ``url``, under
    ``job`` and ``grouping_key``.

    It is prometheus-client's ``pushadd_to_gateway`` (an HTTP POST), not ``push_to_gateway``
    (a PUT): a POST replaces only the metrics it names. A successful job replaces them all; a
    failed one replaces its counters, duration and failures but leaves the last success time of
    the job before it, so an alert on that time's age keeps working through failures.

    Returns False, with a WARNING, if the push failed: the outcome of the job is what it was
    either way. Never raises for a Pushgateway that is down, refuses, or is slow (it gives up
    after ``PUSH_TIMEOUT`` seconds)."""
    try:
        await asyncio.to_thread(
            pushadd_to_gateway,
            url,
            job=job,
            registry=_WithSamples(registry),
            grouping_key=grouping_key,
            timeout=PUSH_TIMEOUT,
        )
    except (OSError, HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        log.warning(
            "could not push metrics to the Pushgateway at %s: %s; the job's outcome stands",
            url,
            getattr(exc, "reason", None) or exc,
        )
        return False
    log.info("pushed metrics to %s (job %s, %s)", url, job, grouping_key)
    return True
