"""Every Prometheus metric asyncbackup exports, on a registry the caller owns.

Label values are a small fixed set: ``operation`` is backup, restore, verify, list, prune or
commit; ``outcome`` is named at each metric. A caller may add constant labels of its own
(``Metrics(registry, labels={"engine": "nightly"})``), so that two engines in one service export
apart on one registry.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile

from asyncbackup.errors import ConfigError

_CHUNK_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
M = TypeVar("M", Counter, Gauge, Histogram)


class Labelled(Generic[M]):
    """One metric with the engine's constant label values filled in first: ``labels(operation,
    ...)`` gives the child, as prometheus-client's own ``labels`` does."""

    def __init__(self, metric: M, constant: tuple[str, ...]) -> None:
        self.metric: M = metric
        self._constant = constant

    def labels(self, *values: str) -> M:
        child: M = self.metric.labels(*self._constant, *values)
        return child


@dataclass(frozen=True)
class _Collectors:
    """The metric families on one registry, shared by every ``Metrics`` on it."""

    names: tuple[str, ...]
    retries: Counter
    files: Counter
    bytes: Counter
    chunks: Counter
    chunk_duration: Histogram
    inflight: Gauge
    throttled: Counter
    duration: Gauge
    last_success: Gauge
    pruned: Counter
    pruned_bytes: Counter


_ON_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = (
    weakref.WeakKeyDictionary()
)
"""Which families each registry already holds: a second ``Metrics`` on it shares them (a
registry refuses a family registered twice). Weak: a registry dropped by its owner goes."""


class Metrics:
    """The metrics of one engine. Pass ``registry`` to export them with a service's own.

    ``labels`` are constant labels on every series of this engine, such as ``{"engine":
    "nightly"}``: two ``Metrics`` on one registry must have the same label names and differ
    in a value. Avoid the name ``job``: Prometheus sets it on every scraped series and renames
    ours to ``exported_job``.

    Raises:
        ConfigError: a label name is reserved or invalid, or the registry already holds our
            metrics with other label names.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, labels: Mapping[str, str] | None = None
    ) -> None:
        # A fresh registry, never the global one: two engines in one process must not collide.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = dict(labels or {})
        names = tuple(self.labels)
        for name in names:
            if name in ("operation", "outcome", "le") or not name.isidentifier():
                raise ConfigError(f"metric label {name!r} is reserved or not a valid name")
        shared = _ON_REGISTRY.get(self.registry)
        if shared is None:
            shared = _ON_REGISTRY[self.registry] = _collectors(self.registry, names)
        elif shared.names != names:
            raise ConfigError(
                f"this registry already holds asyncbackup's metrics with the labels "
                f"{list(shared.names)}; give every Metrics on it the labels {list(shared.names)}"
                f" (not {list(names)}), with different values"
            )
        values = tuple(self.labels.values())
        self.retries = Labelled(shared.retries, values)
        self.files = Labelled(shared.files, values)
        self.bytes = Labelled(shared.bytes, values)
        self.chunks = Labelled(shared.chunks, values)
        self.chunk_duration = Labelled(shared.chunk_duration, values)
        self.inflight = Labelled(shared.inflight, values)
        self.throttled = Labelled(shared.throttled, values)
        self.duration = Labelled(shared.duration, values)
        self.last_success = Labelled(shared.last_success, values)
        self.pruned = Labelled(shared.pruned, values)
        self.pruned_bytes = Labelled(shared.pruned_bytes, values)

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


def _collectors(registry: CollectorRegistry, names: tuple[str, ...]) -> _Collectors:
    retries = Counter(
        "backup_retry_attempts_total",
        "Transfers retried after a transient store error, one per retry.",
        [*names, "operation"],
        registry=registry,
    )
    files = Counter(
        "backup_files_total",
        "Files processed, by outcome: done (counted as each is stored or restored), unchanged "
        "(since the parent backup, not read), failed, or skipped (special files).",
        [*names, "operation", "outcome"],
        registry=registry,
    )
    bytes = Counter(
        "backup_bytes_total",
        "File bytes processed, by outcome: transferred, or skipped (already in the store).",
        [*names, "operation", "outcome"],
        registry=registry,
    )
    chunks = Counter(
        "backup_chunks_total",
        "Chunks processed, by outcome: transferred, or skipped (already in the store).",
        [*names, "operation", "outcome"],
        registry=registry,
    )
    chunk_duration = Histogram(
        "backup_chunk_duration_seconds",
        "Duration of one successful store request (chunk, listing page or manifest).",
        [*names, "operation"],
        buckets=_CHUNK_SECONDS,
        registry=registry,
    )
    inflight = Gauge(
        "backup_inflight_transfers",
        "Store requests in flight now.",
        [*names, "operation"],
        registry=registry,
    )
    throttled = Counter(
        "backup_throttled_seconds_total",
        "Seconds transfers waited for --bwlimit tokens, summed over transfers.",
        [*names, "operation"],
        registry=registry,
    )
    duration = Gauge(
        "backup_duration_seconds",
        "Wall time of the last job that ended, successful or not.",
        [*names, "operation"],
        registry=registry,
    )
    last_success = Gauge(
        "backup_last_success_timestamp_seconds",
        "Unix time at which the last successful job ended.",
        [*names, "operation"],
        registry=registry,
    )
    pruned = Counter(
        "backup_pruned_objects_total",
        "Objects prune changed, by kind (backup, chunk, pack) and outcome: deleted (no "
        "remaining backup uses it), repacked (a pack past --max-unused whose live chunks were "
        "copied before it was deleted), written (a new pack of repacked chunks).",
        [*names, "operation", "kind", "outcome"],
        registry=registry,
    )
    pruned_bytes = Counter(
        "backup_pruned_bytes_total",
        "Bytes prune freed in the store (deleted less written), or copied into new packs.",
        [*names, "operation", "outcome"],
        registry=registry,
    )
    return _Collectors(
        names, retries, files, bytes, chunks, chunk_duration, inflight, throttled, duration,
        last_success, pruned, pruned_bytes,
    )  # fmt: skip
