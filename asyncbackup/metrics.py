"""Every Prometheus metric asyncbackup exports, on a registry the caller owns.

Label values are a small fixed set: ``operation`` is backup, restore, verify or prune; ``outcome``
is named at each metric.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile

_CHUNK_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The metrics of one engine. Pass ``registry`` to export them with a service's own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A fresh registry, never the global one: two engines in one process must not collide.
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.retries = Counter(
            "backup_retry_attempts_total",
            "Transfers retried after a transient store error, one per retry.",
            ["operation"],
            registry=r,
        )
        self.files = Counter(
            "backup_files_total",
            "Files processed, by outcome: done (counted as each is stored or restored), unchanged "
            "(since the parent backup, not read), failed, "
            "or skipped (special files).",
            ["operation", "outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "backup_bytes_total",
            "File bytes processed, by outcome: transferred, or skipped (already in the store).",
            ["operation", "outcome"],
            registry=r,
        )
        self.chunks = Counter(
            "backup_chunks_total",
            "Chunks processed, by outcome: transferred, or skipped (already in the store).",
            ["operation", "outcome"],
            registry=r,
        )
        self.chunk_duration = Histogram(
            "backup_chunk_duration_seconds",
            "Duration of one successful store request (chunk, listing page or manifest).",
            ["operation"],
            buckets=_CHUNK_SECONDS,
            registry=r,
        )
        self.inflight = Gauge(
            "backup_inflight_transfers",
            "Store requests in flight now.",
            ["operation"],
            registry=r,
        )
        self.throttled = Counter(
            "backup_throttled_seconds_total",
            "Seconds transfers waited for --bwlimit tokens, summed over transfers.",
            ["operation"],
            registry=r,
        )
        self.duration = Gauge(
            "backup_duration_seconds",
            "Wall time of the last job that ended, successful or not.",
            ["operation"],
            registry=r,
        )
        self.last_success = Gauge(
            "backup_last_success_timestamp_seconds",
            "Unix time at which the last successful job ended.",
            ["operation"],
            registry=r,
        )

    def start(self, operation: str) -> None:
        """Show every series of ``operation`` from the start, so a job without retries
        exports ``backup_retry_attempts_total 0`` rather than nothing."""
        self.retries.labels(operation)
        self.inflight.labels(operation)
        self.throttled.labels(operation)
        for outcome in ("done", "unchanged", "failed", "skipped"):
            self.files.labels(operation, outcome)
        for outcome in ("transferred", "skipped"):
            self.bytes.labels(operation, outcome)
            self.chunks.labels(operation, outcome)

    def write_textfile(self, path: Path) -> None:
        """Write every metric to ``path`` in the text format, atomically (node_exporter's
        textfile collector reads it)."""
        write_to_textfile(str(path), self.registry)
