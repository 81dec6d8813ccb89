"""Configuration: small frozen dataclasses, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncbackup.compression import Compression
from asyncbackup.errors import ConfigError

MiB = 1024 * 1024

DEFAULT_CONCURRENCY = 16
DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_BASE_DELAY = 0.1
DEFAULT_MAX_DELAY = 20.0
DEFAULT_ATTEMPT_TIMEOUT = 120.0
DEFAULT_RETRY_BUDGET = 100
DEFAULT_PACK_THRESHOLD = 1 * MiB
"""Chunks whose encoded size is below this go into packs (docs/design.md, "Packs"); 0: none do."""
DEFAULT_PACK_SIZE = 16 * MiB
"""A pack is stored once it holds this many bytes (the last one of a backup, fewer)."""
DEFAULT_BUFFER_BUDGET = 128 * MiB
"""File data a job may hold in memory at once (read ahead of uploads, fetched ahead of writes):
16 chunks of 8 MiB in flight, enough to keep a 25 ms store busy, and with the interpreter and
the SDKs a job stays under 300 MiB of RSS at any concurrency."""
DEFAULT_MAX_MANIFEST_SIZE = 256 * MiB
"""The largest MANIFEST read (stored and decoded): about a million files of one chunk each.
Anyone who can write to the bucket can write a MANIFEST; this bounds what reading one costs."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How one transfer is retried, and how many retries a whole job may spend.

    Attempt n (n >= 1) that fails transiently is followed by a sleep drawn uniformly from
    ``[0, min(max_delay, base_delay * 2 ** (n - 1))]`` (full jitter), outside the concurrency limit.
    The job-wide budget starts at ``budget`` retries; each successful transfer earns back
    ``budget_refill`` of one, up to ``budget``. A store that is down drains it and the job stops,
    instead of every chunk retrying for minutes.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    max_time: float | None = None
    budget: int = DEFAULT_RETRY_BUDGET
    budget_refill: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ConfigError(
                f"retry delays must satisfy 0 <= base_delay <= max_delay, "
                f"not {self.base_delay} and {self.max_delay}"
            )
        if self.attempt_timeout <= 0:
            raise ConfigError(f"attempt_timeout must be positive, not {self.attempt_timeout}")
        if self.max_time is not None and self.max_time <= 0:
            raise ConfigError(f"max_time must be positive or None, not {self.max_time}")
        if self.budget < 0 or self.budget_refill < 0:
            raise ConfigError("the retry budget and its refill must not be negative")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """What the engine may hold and run at once.

    Memory: file data held by a job (chunks read and not yet uploaded, chunks fetched and not
    yet written, chunks a restore keeps for a later use) is bounded in bytes by
    ``buffer_budget`` (``budget.py``), whatever the concurrency and the chunk size: each buffer
    takes its bytes from the budget before it is filled and gives them back once it is gone.
    One buffer larger than the whole budget (a chunk bigger than it) still proceeds, alone.
    A restore streams each large chunk to its place in the file, holding ``fetch.STREAM_HOLD``
    (768 KiB) per download, not the chunk.

    With ``compression``, a chunk being uploaded also holds its encoded copy (never larger than
    the chunk): a backup takes twice the chunk's length from the budget. Add one codec context
    per worker thread (zstd level 3: about 1.3 MiB; level 19: tens of MiB), and the SDKs' own
    socket buffers, per connection.
    """

    concurrency: int = DEFAULT_CONCURRENCY
    chunk_size: int = DEFAULT_CHUNK_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compression: Compression = field(default_factory=Compression)
    max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE
    pack_threshold: int = DEFAULT_PACK_THRESHOLD
    pack_size: int = DEFAULT_PACK_SIZE
    buffer_budget: int = DEFAULT_BUFFER_BUDGET

    def __post_init__(self) -> None:
        if not 64 * 1024 <= self.pack_size <= 1024 * MiB:
            raise ConfigError(
                f"pack size must be between 64 KiB and 1 GiB, not {self.pack_size} bytes"
            )
        if not 0 <= self.pack_threshold <= 1024 * MiB:
            raise ConfigError(
                f"the pack threshold must be between 0 (no packs) and 1 GiB, "
                f"not {self.pack_threshold} bytes"
            )
        if self.buffer_budget < MiB:
            raise ConfigError(
                f"the buffer budget must be at least 1 MiB, not {self.buffer_budget} bytes"
            )
        if self.max_manifest_size < 1024:
            raise ConfigError(
                f"the MANIFEST size limit must be at least 1 KiB, not {self.max_manifest_size}"
            )
        if not 1 <= self.concurrency <= 1024:
            raise ConfigError(f"concurrency must be between 1 and 1024, not {self.concurrency}")
        if not 64 * 1024 <= self.chunk_size <= 1024 * MiB:
            raise ConfigError(
                f"chunk size must be between 64 KiB and 1 GiB, not {self.chunk_size} bytes"
            )

    @property
    def buffered_chunks(self) -> int:
        """How many transfer tasks may be alive at once (their bytes: ``buffer_budget``)."""
        return 2 * self.concurrency
