"""The workloads of the suite, their data, and what a store must hold once a contender is done.

Every file is seeded random bytes: incompressible and all distinct, so no contender gains from
compression or deduplication. A tree is written once and reused by every contender and round.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from asyncbackup.config import DEFAULT_CHUNK_SIZE
from asyncbackup.layout import chunk_key, manifest_key

KiB = 1024
MiB = 1024 * KiB
FILES_PER_DIR = 1000  # W4's 100,000 files in directories of 1,000, as a real tree has


@dataclass(frozen=True)
class Workload:
    """``files`` files of ``size`` bytes; ``fault_rate`` of the requests fail transiently."""

    name: str
    title: str
    files: int
    size: int
    fault_rate: float = 0.0
    flat: bool = False  # all files in one directory, however many

    @property
    def total_bytes(self) -> int:
        return self.files * self.size

    def scaled(self, files: int, size: int) -> Workload:
        return Workload(self.name, self.title, files, size, self.fault_rate)


W1 = Workload("W1", "2,000 files of 64 KiB", 2000, 64 * KiB)
W2 = Workload("W2", "one file of 1 GiB", 1, 1024 * MiB)
W3 = Workload("W3", "W1 with 5% of requests failing", 2000, 64 * KiB, fault_rate=0.05)
W4 = Workload("W4", "100,000 files of 4 KiB", 100_000, 4 * KiB)
FULL = (W1, W2, W3, W4)
# bench-quick: the same shapes, scaled down so the whole suite takes a minute or two.
# The emulators' cost per key under one prefix: flat trees of 5,000 and 10,000 files.
SCALING = (
    Workload("S5k", "5,000 files of 4 KiB in one directory", 5000, 4 * KiB, flat=True),
    Workload("S10k", "10,000 files of 4 KiB in one directory", 10_000, 4 * KiB, flat=True),
)
QUICK = (
    W1.scaled(200, 64 * KiB),
    W2.scaled(1, 64 * MiB),
    W3.scaled(200, 64 * KiB),
    W4.scaled(2000, 4 * KiB),
)


@dataclass(frozen=True)
class Expected:
    """What the store must hold, as (key relative to the prefix) -> (size, MD5 hex).

    ``files`` is a plain copy (the peers: one object per file); ``asyncbackup`` is the
    repository format (one object per distinct 8 MiB chunk, keyed by its sha256, and a MANIFEST).
    S3 and GCS servers report each object's MD5 computed from the bytes they received, so a
    listing proves every byte arrived without downloading anything.
    """

    files: dict[str, tuple[int, str]]
    asyncbackup: dict[str, tuple[int, str]]
    manifest: str


def make_tree(root: Path, workload: Workload, *, seed: int = 2026) -> Expected:
    """Write the workload's files under ``root`` and return what a store must hold afterwards."""
    rng = random.Random(seed)
    files: dict[str, tuple[int, str]] = {}
    chunks: dict[str, tuple[int, str]] = {}
    for i in range(workload.files):
        rel = f"f{i:06d}.bin"
        if workload.files > FILES_PER_DIR and not workload.flat:
            rel = f"d{i // FILES_PER_DIR:03d}/{rel}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        whole = hashlib.md5(usedforsecurity=False)
        with path.open("wb") as out:
            left = workload.size
            while left:  # a chunk at a time, so a 1 GiB file never sits in memory whole
                data = rng.randbytes(min(left, DEFAULT_CHUNK_SIZE))
                out.write(data)
                whole.update(data)
                md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                chunks[chunk_key(hashlib.sha256(data).hexdigest())] = (len(data), md5)
                left -= len(data)
        files[rel] = (workload.size, whole.hexdigest())
    return Expected(files, chunks, manifest_key("bench"))
