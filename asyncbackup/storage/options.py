"""How to reach a remote store: what the URL alone cannot say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncbackup.errors import ConfigError

AddressingStyle = Literal["auto", "path", "virtual"]

DEFAULT_MAX_CONNECTIONS = 64

READABLE_STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
)
"""S3 storage classes whose objects can be read at once. GLACIER and DEEP_ARCHIVE need a thaw
request, hours ahead, before each chunk can be downloaded: a backup there could not be restored
by this tool, so they are refused."""

SERVER_SIDE_ENCRYPTION = ("AES256", "aws:kms")


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
    storage_class: str | None = None
    """S3 only: the storage class of chunks; the MANIFEST, small and read by every ``list``,
    stays in the bucket's default class."""
    server_side_encryption: str | None = None
    """S3 only: ``AES256`` or ``aws:kms``, for every object."""
    kms_key_id: str | None = None
    """S3 only, with ``aws:kms``: the KMS key; the bucket's or AWS's default key without it."""

    @property
    def s3_only(self) -> list[str]:
        """The S3-only settings that are set, by name."""
        fields = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "storage_class": self.storage_class,
            "server_side_encryption": self.server_side_encryption,
            "kms_key_id": self.kms_key_id,
        }
        return [name for name, value in fields.items() if value is not None]

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, not {self.max_connections}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("connect and read timeouts must be positive")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"addressing style must be auto, path or virtual, not {self.addressing_style!r}"
            )
        if self.storage_class is not None and self.storage_class not in READABLE_STORAGE_CLASSES:
            raise ConfigError(
                f"storage class {self.storage_class!r} is not one a restore can read at once; "
                f"use one of {', '.join(READABLE_STORAGE_CLASSES)} (GLACIER and DEEP_ARCHIVE "
                "need a thaw before every download)"
            )
        if (
            self.server_side_encryption is not None
            and self.server_side_encryption not in SERVER_SIDE_ENCRYPTION
        ):
            raise ConfigError(
                f"server-side encryption must be AES256 or aws:kms, "
                f"not {self.server_side_encryption!r}"
            )
        if self.kms_key_id is not None and self.server_side_encryption != "aws:kms":
            raise ConfigError("a KMS key id needs server-side encryption aws:kms")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(
                f"endpoint URL {self.endpoint_url!r} must start with http:// or https://"
            )
