"""Shard records: one shard's part of a backup, stored until ``commit`` merges them.

```
shards/<name>/<k>.record    a JSON head line, then the shard's entries as a MANIFEST would
                            hold them (``Manifest.to_bytes``: two zstd frames), then, if the
                            shard names packed chunks, its INDEX part (``PackIndex.encode``:
                            where each of them lies), ``index_bytes`` long
shards/<name>/<k>.started   written when shard k begins: a re-run knows an earlier attempt
                            may have stored chunks that no record names, and lists them
```

The head line names the backup, the shard (index and count), where it ran (host, pid, the
Dask worker if any), the source, the options every shard must share, and the sha256 and length
of the bytes after it: a record cut short or edited without recomputing them is refused.
``list`` and ``restore`` never look under ``shards/``: a record is not a backup.

Prune counts every chunk a record names as in use, and every pack its INDEX part names as
pinned: neither deleted nor repacked (``refs_of_shard_records``), because between a shard's end
and the commit no lock protects them; a record older than ``RECORD_EXPIRY`` is abandoned: prune
removes it, and its chunks and packs are then as unused as any other.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from asyncbackup.chunking import sha256_hex
from asyncbackup.errors import ManifestError, ObjectNotFoundError
from asyncbackup.layout import SHARDS, shard_key
from asyncbackup.manifest import Manifest
from asyncbackup.manifest_reader import read_manifest
from asyncbackup.packs import PackIndex, read_index
from asyncbackup.repository import Repository
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
RECORD_VERSION = 1
RECORD_EXPIRY = 7 * 24 * 3600.0
"""Seconds after which a shard record no commit took is abandoned (prune removes it): long
enough for an operator to mend and re-run a failed commit over a weekend; the same on every host,
like the lock's stale period, so not an option."""


@dataclass(frozen=True)
class ShardRecord:
    """One shard's part of a backup, as read back from the store."""

    key: str
    index: int
    count: int
    host: str
    pid: int
    worker: str  # the Dask worker's address, or "" outside Dask
    options: dict[str, Any]  # what every shard of one backup must share
    written: str  # ISO 8601, UTC
    manifest: Manifest  # the shard's entries, warnings, times, source, parent
    places: PackIndex = field(default_factory=PackIndex)  # where its packed chunks lie

    @property
    def where(self) -> str:
        """Where the shard ran, for messages: host, pid, and the Dask worker if any."""
        worker = f", Dask worker {self.worker}" if self.worker else ""
        return f"host {self.host}, pid {self.pid}{worker}"


def encode_record(
    manifest: Manifest,
    *,
    index: int,
    count: int,
    options: dict[str, Any],
    worker: str,
    written: str,
    places: PackIndex | None = None,
) -> bytes:
    """The bytes of shard ``index``'s record of ``manifest`` and, if it names packed chunks,
    their ``places`` (blocking: run in a thread)."""
    index_part = places.encode(manifest.name) if places else b""
    body = manifest.to_bytes() + index_part
    head = {
        "shard_record": RECORD_VERSION,
        "name": manifest.name,
        "index": index,
        "count": count,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker": worker,
        "options": options,
        "written": written,
        "body_sha256": sha256_hex(body),
        "body_bytes": len(body),
        "index_bytes": len(index_part),
    }
    return json.dumps(head, sort_keys=True).encode("ascii") + b"\n" + body


async def decode_record(data: bytes, *, key: str, limit: int) -> ShardRecord:
    """Parse and check a record read from ``key``, its entries and its INDEX part in bounded
    worker-thread trips with the event loop free between them (as
    ``manifest_reader.read_manifest`` reads a MANIFEST): a record of 100,000 entries never
    holds the loop, nor the GIL, for more than one trip.

    Raises:
        ManifestError: it is not a record, was cut short, or its body does not match the
            sha256 its head gives (edited by hand, or damaged).
    """
    head, entries_part, index_part = await to_thread(split_record, data, key=key)
    manifest = await read_manifest(entries_part, where=key, limit=limit)
    places = PackIndex()
    if index_part:
        where = f"{key} (its INDEX part)"
        places = await read_index(index_part, where=where, limit=limit)
    try:
        return ShardRecord(
            key=key,
            index=_int(head["index"]),
            count=_int(head["count"]),
            host=str(head["host"]),
            pid=_int(head["pid"]),
            worker=str(head["worker"]),
            options=dict(head["options"]),
            written=str(head["written"]),
            manifest=manifest,
            places=places,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{key}: the shard record's head is malformed ({exc!r})") from exc


def split_record(data: bytes, *, key: str) -> tuple[dict[str, Any], bytes, bytes]:
    """A record's head, its entries part (a MANIFEST's bytes) and its INDEX part, once its
    body is checked against the sha256 and length the head gives (blocking: run in a thread).

    Raises:
        ManifestError: it is not a record, was cut short, or was edited or damaged.
    """
    head_line, newline, body = data.partition(b"\n")
    try:
        head = json.loads(head_line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{key}: not a shard record: its first line is not JSON") from exc
    if not isinstance(head, dict) or head.get("shard_record") != RECORD_VERSION or not newline:
        raise ManifestError(f"{key}: not a shard record of version {RECORD_VERSION}")
    if head.get("body_bytes") != len(body) or head.get("body_sha256") != sha256_hex(body):
        raise ManifestError(
            f"{key}: the shard record does not match the sha256 and length its head gives: it "
            "was damaged or edited; run that shard again to replace it"
        )
    index_bytes = head.get("index_bytes", 0)
    if not isinstance(index_bytes, int) or not 0 <= index_bytes <= len(body):
        raise ManifestError(f"{key}: the shard record's head is malformed (index_bytes)")
    split = len(body) - index_bytes
    return head, body[:split], body[split:]


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value


async def read_record(repo: Repository, name: str, index: int) -> ShardRecord | None:
    """Shard ``index``'s record of backup ``name``, or None if there is none.

    Raises:
        ManifestError: the record is larger than the MANIFEST limit, damaged or edited.
    """
    key = shard_key(name, index)
    try:
        data = await repo.get_object(key, action="read shard record")
    except ObjectNotFoundError:
        return None
    if len(data) > repo.manifest_limit:
        raise ManifestError(
            f"{key}: the shard record is {len(data):,} bytes, over the MANIFEST limit of "
            f"{repo.manifest_limit:,} (--max-manifest-size)"
        )
    return await decode_record(data, key=key, limit=repo.manifest_limit)


async def refs_of_shard_records(
    repo: Repository, *, now: float, dry_run: bool
) -> tuple[set[str], set[str]]:
    """Every chunk ref, and every pack id, that a shard record not yet committed names: prune
    keeps the chunks, and neither deletes nor repacks the packs (see docs/design.md, "Shards").

    Between a shard's end and the commit no lock protects the chunks the shard stored, so prune
    (under its exclusive lock, so no shard writes a record meanwhile) must count them as in
    use. A record older than ``RECORD_EXPIRY`` is abandoned: it is removed (not in a dry run),
    with a WARNING, and its chunks count no more. A record that cannot be read is left in place
    with a WARNING: its chunks may then be swept, and the commit, which checks that every chunk
    is stored, refuses rather than commit a backup that would not restore.
    """
    refs: set[str] = set()
    packs: set[str] = set()
    async for page in repo.object_pages(SHARDS):
        for obj in page:
            if obj.modified < now - RECORD_EXPIRY:
                days = (now - obj.modified) / 86400
                verb = "would remove" if dry_run else "removing"
                log.warning(
                    "%s was written %.1f days ago and never committed: abandoned; %s it",
                    obj.key, days, verb,
                )  # fmt: skip
                if not dry_run:
                    await repo.delete_object(obj.key)
                continue
            if not obj.key.endswith(".record"):
                continue
            try:
                data = await repo.get_object(obj.key, action="read shard record")
                record = await decode_record(data, key=obj.key, limit=repo.manifest_limit)
            except (ManifestError, ObjectNotFoundError) as exc:
                log.warning("%s cannot be read (%s): its chunks are not kept for it", obj.key, exc)
                continue
            refs |= record.manifest.refs()
            packs |= record.places.pack_sizes.keys()
    return refs, packs
