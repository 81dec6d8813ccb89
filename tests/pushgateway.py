"""A stand-in Pushgateway on 127.0.0.1 that records every request, and helpers that read the
Prometheus text format with prometheus-client's own parser."""

from __future__ import annotations

import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a text-format exposition, by (sample name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return parse_samples(response.read().decode())


@dataclass(frozen=True)
class Pushed:
    method: str
    path: str
    content_type: str
    body: str

    @property
    def samples(self) -> Samples:
        return parse_samples(self.body)


class PushReceiver:
    """Answers every PUT, POST and DELETE with ``status`` and keeps what it was sent, in
    ``received``. Use as ``with PushReceiver() as gateway:``; its thread and socket are gone
    after the block."""

    def __init__(self, *, status: int = 200) -> None:
        received: list[Pushed] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                content_type = self.headers.get("Content-Type", "")
                received.append(Pushed(self.command, self.path, content_type, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = do_DELETE = _record

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: pytest shows what matters

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
