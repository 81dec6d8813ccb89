"""How to reach a remote store: what the URL alone cannot say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncbackup.errors import ConfigError

AddressingStyle = Literal["auto", "path", "virtual"]

DEFAULT_MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class StoreOptions:
    """Connection settings for S3 and GCS stores; local and memory stores ignore them.

    ``max_connections`` sizes the HTTP connection pool and must be at least the engine's
    concurrency, or transfers queue for a connection inside the SDK, where our per-attempt timeout
    counts the wait as a hung request. Unset fields fall back to the SDK's usual sources
    (``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``STORAGE_EMULATOR_HOST``, the
    credential chains).
    """

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: AddressingStyle = "auto"
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, not {self.max_connections}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("connect and read timeouts must be positive")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"addressing style must be auto, path or virtual, not {self.addressing_style!r}"
            )
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(
                f"endpoint URL {self.endpoint_url!r} must start with http:// or https://"
            )
