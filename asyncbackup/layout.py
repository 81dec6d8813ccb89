"""Where things live in a store: the one place that knows the key layout.

chunks/<sha256 of the raw chunk>     the bytes of one chunk, stored once however often used
chunks/<sha256 of the raw chunk>.zst the same chunk compressed (.gz for gzip): see compression.py
backups/<name>/MANIFEST              the commit record of one backup, written last
backups/<name>/INDEX                 where each packed chunk of that backup lies: see packs.py
backups/<name>/SOURCE.<group>.<time> empty: whose host and source, finished when (catalog.py)
packs/<sha256 of the pack's bytes>   small chunks, encoded, end to end, then a trailer: packs.py
locks/<random id>                    a job's repository lock (JSON): see locks.py
shards/<name>/<k>.record             shard k's part of backup <name>, until its commit: see
                                     shard_records.py
shards/<name>/<k>.started            shard k began (a re-run then lists what it stored)
"""

from __future__ import annotations

import hashlib
import re

from asyncbackup.errors import ConfigError

CHUNKS = "chunks/"
BACKUPS = "backups/"
MANIFEST = "MANIFEST"
INDEX = "INDEX"
SOURCE_MARK = "SOURCE."
LOCKS = "locks/"
PACKS = "packs/"
SHARDS = "shards/"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_REF = re.compile(r"([0-9a-f]{64})(\.zst|\.gz)?")


def chunk_key(ref: str) -> str:
    """The key of the chunk ``ref`` names: its raw sha256, plus its codec's suffix if any."""
    return CHUNKS + ref


def is_chunk_ref(text: str) -> bool:
    """Whether ``text`` names a chunk: a lowercase hex sha256, optionally ``.zst`` or ``.gz``."""
    return _REF.fullmatch(text) is not None


def digest_of_ref(ref: str) -> str:
    """The raw sha256 a chunk ref names (the ref without its codec suffix)."""
    return ref[:64]


def ref_of_chunk_key(key: str) -> str | None:
    """The chunk ref a key under ``chunks/`` names, or None for anything else (a stray file)."""
    ref = key.removeprefix(CHUNKS)
    return ref if key.startswith(CHUNKS) and is_chunk_ref(ref) else None


def manifest_key(name: str) -> str:
    """The key of backup ``name``'s MANIFEST."""
    return f"{BACKUPS}{name}/{MANIFEST}"


def name_of_manifest_key(key: str) -> str | None:
    """The backup name a ``backups/<name>/MANIFEST`` key names, or None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == BACKUPS and parts[2] == MANIFEST:
        return parts[1]
    return None


def source_group(host: str, source: str) -> str:
    """The host and source directory of a backup, as a short name: a hash, so that a key
    holds any path."""
    both = f"{host}\0{source}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(both).hexdigest()[:32]


def source_mark_key(name: str, *, host: str, source: str, finished: str) -> str:
    """The key of the mark of backup ``name``: its host and source (``source_group``) and its
    finish time (the digits of its ISO 8601 UTC time), so that a listing of ``backups/``
    alone names the newest backup of a host and source."""
    stamp = "".join(c for c in finished if c.isdigit())
    return f"{BACKUPS}{name}/{SOURCE_MARK}{source_group(host, source)}.{stamp}"


def source_mark_of_key(key: str) -> tuple[str, str, str] | None:
    """(backup name, group, time stamp) of a ``source_mark_key``, or None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] + "/" != BACKUPS or not parts[2].startswith(SOURCE_MARK):
        return None
    group, _, stamp = parts[2].removeprefix(SOURCE_MARK).partition(".")
    return (parts[1], group, stamp) if group and stamp.isdigit() else None


def index_key(name: str) -> str:
    """The key of backup ``name``'s INDEX (written only by backups that pack chunks)."""
    return f"{BACKUPS}{name}/{INDEX}"


def pack_key(pack_id: str) -> str:
    """The key of the pack ``pack_id`` names: the sha256 of its bytes."""
    return PACKS + pack_id


def pack_id_of_key(key: str) -> str | None:
    """The pack id a key under ``packs/`` names, or None for anything else (a stray file)."""
    pack_id = key.removeprefix(PACKS)
    return pack_id if key.startswith(PACKS) and is_digest(pack_id) else None


def lock_key(lock_id: str) -> str:
    """The key of the lock ``lock_id`` (random hex, so no two jobs ever share one)."""
    return LOCKS + lock_id


def shard_key(name: str, index: int, *, started: bool = False) -> str:
    """The key of shard ``index``'s record of backup ``name`` (or of its start marker)."""
    return f"{SHARDS}{name}/{index}.{'started' if started else 'record'}"


def shard_packs_key(name: str, index: int) -> str:
    """The key of the list of packs shard ``index`` of backup ``name`` stored so far: what a
    re-run of the shard may reuse after a crash (``shards.py``)."""
    return f"{SHARDS}{name}/{index}.packs"


def is_digest(text: str) -> bool:
    """Whether ``text`` is a lowercase hex sha256."""
    return _DIGEST.fullmatch(text) is not None


def check_backup_name(name: str) -> str:
    """Return ``name`` if it is a valid backup name.

    Raises:
        ConfigError: the name is empty, too long, or has characters other than letters, digits
            and ``._+-`` (it becomes part of a key, so it must be safe on every store).
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid backup name {name!r}: use 1 to 200 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit"
        )
    return name
