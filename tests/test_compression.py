"""Per-chunk compression: codecs, bounded decoding, refs in the MANIFEST, dedup across codecs."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    ConfigError,
    EngineConfig,
    IntegrityError,
    ManifestError,
    MemoryStorage,
)
from asyncbackup.compression import Codec, Compression, decode, encode, preferred_refs
from asyncbackup.layout import manifest_key
from asyncbackup.manifest_encoding import decode as decode_manifest
from asyncbackup.storage.base import ObjectPage, Storage
from tests.conftest import SMALL_CHUNK, RecordingSleep, assert_same_tree, fast_config, make_tree

TEXT = b"".join(b"line %d of a log that repeats itself a lot\n" % (i % 50) for i in range(4000))


def zstd_config(codec: Codec = "zstd") -> EngineConfig:
    return replace(fast_config(), compression=Compression(codec))


def compressible_tree(root: Path) -> Path:
    make_tree(root)  # random data (stays raw) beside text (shrinks)
    (root / "log.txt").write_bytes(TEXT)  # 176 KB: three chunks, each compressible
    (root / "small.txt").write_bytes(TEXT[:5000])
    return root


class Recording(Storage):
    """Keeps what each put was given, so tests can check the digest sent with the bytes."""

    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner
        self.url = inner.url
        self.digests: dict[str, str | None] = {}

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        self.digests[key] = digest
        await self.inner.put(key, data, overwrite=overwrite, digest=digest)

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        return await self.inner.list_objects(prefix, token)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_a_codec_round_trips_and_incompressible_data_stays_raw(codec: Codec) -> None:
    compression = Compression(codec)
    encoded, used = encode(TEXT, compression)
    assert used == codec and len(encoded) < len(TEXT) / 10
    assert decode(encoded, used, limit=len(TEXT), where="x") == TEXT
    noise = os.urandom(100_000)
    assert encode(noise, compression) == (noise, "none")  # it would not shrink: stored raw
    assert encode(b"", compression) == (b"", "none")


@pytest.mark.parametrize(
    ("codec", "level", "message"),
    [
        ("zstd", 0, "zstd compression level must be between 1 and 22, not 0"),
        ("zstd", 23, "between 1 and 22, not 23"),
        ("gzip", 10, "gzip compression level must be between 1 and 9, not 10"),
        ("none", 3, "a compression level needs a codec"),
        ("lz4", None, "unknown compression 'lz4'"),
    ],
)
def test_bad_codecs_and_levels_are_refused(codec: Codec, level: int | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Compression(codec, level)


def test_default_levels() -> None:
    assert Compression("zstd").level == 3
    assert Compression("gzip").level == 6
    assert Compression("zstd", 19).level == 19


def zstd_bomb(size: int, *, declare: bool) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=declare).compress(bytes(size))


@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(zstd_bomb(50_000_000, declare=True), id="zstd-declared"),
        pytest.param(gzip.compress(bytes(50_000_000), mtime=0), id="gzip"),
    ],
)
def test_decoding_stops_at_the_limit(bomb: bytes) -> None:
    codec: Codec = "gzip" if bomb[:2] == b"\x1f\x8b" else "zstd"
    assert len(bomb) < 100_000  # a small object that claims 50 MB
    with pytest.raises(IntegrityError, match="decodes to more than the 65536 bytes"):
        decode(bomb, codec, limit=SMALL_CHUNK, where="chunk x")


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_damaged_streams_are_integrity_errors(codec: Codec) -> None:
    encoded, _ = encode(TEXT, Compression(codec))
    for damaged in (encoded[:-5], encoded + b"junk", b"not compressed at all"):
        with pytest.raises(
            IntegrityError, match=f"chunk x is corrupt: it does not decode as {codec}"
        ):
            decode(damaged, codec, limit=len(TEXT), where="chunk x")


def test_a_zstd_frame_must_declare_its_size_and_hold_exactly_that() -> None:
    undeclared = zstd_bomb(50_000_000, declare=False)
    with pytest.raises(IntegrityError, match="does not declare its size"):
        decode(undeclared, "zstd", limit=SMALL_CHUNK, where="chunk x")
    two_frames = zstd_bomb(1000, declare=True) * 2
    with pytest.raises(IntegrityError, match="unused data"):
        decode(two_frames, "zstd", limit=SMALL_CHUNK, where="chunk x")


def test_preferred_refs_reuse_any_codec_and_prefer_the_one_asked() -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    refs = [a, a + ".zst", b + ".gz", c, c + ".gz"]
    assert preferred_refs(refs, "zstd") == {a: a + ".zst", b: b + ".gz", c: c}
    assert preferred_refs(refs, "none") == {a: a, b: b + ".gz", c: c}
    assert preferred_refs(refs, "gzip") == {a: a, b: b + ".gz", c: c + ".gz"}


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
async def test_a_compressed_backup_is_smaller_and_restores_identically(
    tmp_path: Path, sleep: RecordingSleep, codec: Codec
) -> None:
    source = compressible_tree(tmp_path / "src")
    store = Recording(MemoryStorage())
    config = zstd_config(codec)
    summary = await BackupEngine(store, config, sleep=sleep).backup(source, name="z")
    manifest = await BackupEngine(store).manifest("z")
    suffix = {"zstd": ".zst", "gzip": ".gz"}[codec]
    objects = store.inner.objects

    by_path = {e.path: e for e in manifest.entries}
    assert all(r.endswith(suffix) for r in by_path["log.txt"].chunks)
    assert all(len(r) == 64 for r in by_path["big.bin"].chunks)  # random: stored raw
    stored = sum(len(v) for k, v in objects.items() if k.startswith("chunks/"))
    assert stored < manifest.totals.bytes - len(TEXT) // 2  # the text shrank
    assert summary.bytes_uploaded == stored
    # Version 3: every backup writes it now (zstd, ctime and inode, owners, the root).
    assert manifest.format_version == 3 and manifest.compression == codec
    doc = json.loads(decode_manifest(objects[manifest_key("z")], where="test"))
    assert doc["format_version"] == 3

    # Each put carried the sha256 of the bytes it stored, not of the raw chunk.
    for key, digest in store.digests.items():
        if key.startswith("chunks/"):
            assert digest == hashlib.sha256(objects[key]).hexdigest(), key
    ref = by_path["log.txt"].chunks[0]
    assert store.digests["chunks/" + ref] != ref[:64]

    await BackupEngine(store, fast_config(), sleep=sleep).restore("z", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")
    report = await BackupEngine(store).verify("z", deep=True)
    assert report.ok and report.chunks_checked == manifest.totals.unique_chunks


async def test_chunks_stored_under_one_codec_are_not_uploaded_again_under_another(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = compressible_tree(tmp_path / "src")
    memory = MemoryStorage()
    raw = await BackupEngine(memory, fast_config(), sleep=sleep).backup(source, name="raw")
    keys = set(memory.objects)
    again = BackupEngine(memory, zstd_config(), sleep=sleep)
    zst = await again.backup(source, name="zst")
    assert zst.chunks_uploaded == 0 and raw.chunks_uploaded > 0
    new = {k for k in set(memory.objects) - keys if "/SOURCE." not in k}  # but its mark
    assert new == {manifest_key("zst")}
    manifest = await BackupEngine(memory).manifest("zst")
    assert all(len(r) == 64 for r in manifest.refs())  # every chunk it names is raw
    await BackupEngine(memory, fast_config(), sleep=sleep).restore("zst", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


async def test_a_manifest_of_the_first_format_still_restores(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    """A MANIFEST as the first version wrote it: format 1, uncompressed JSON, no "compression",
    "tags" or "parent" field, no entry for the root directory, no ctime, inode or owner."""
    source = make_tree(tmp_path / "src")
    memory = MemoryStorage()
    await BackupEngine(memory, fast_config(), sleep=sleep).backup(source, name="old")
    doc = json.loads(decode_manifest(memory.objects[manifest_key("old")], where="test"))
    for field in ("compression", "tags", "parent"):  # what version 1 lacked, with version 3's
        del doc[field]
    doc["entries"] = [e for e in doc["entries"] if e["path"] != "."]  # the root's entry
    for entry in doc["entries"]:
        for field in ("ctime_ns", "inode", "uid", "gid", "xattrs", "hardlink"):
            entry.pop(field, None)
    doc["format_version"] = 1
    memory.objects[manifest_key("old")] = json.dumps(doc).encode()
    await BackupEngine(memory, fast_config(), sleep=sleep).restore("old", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


async def test_a_suffix_in_a_first_format_manifest_is_refused(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = compressible_tree(tmp_path / "src")
    memory = MemoryStorage()
    await BackupEngine(memory, zstd_config(), sleep=sleep).backup(source, name="z")
    doc = json.loads(decode_manifest(memory.objects[manifest_key("z")], where="test"))
    doc["format_version"] = 1
    doc["entries"] = [e for e in doc["entries"] if e["path"] != "."]  # version 1 had no root
    memory.objects[manifest_key("z")] = json.dumps(doc).encode()
    with pytest.raises(ManifestError, match="a chunk hash is not a sha256"):
        await BackupEngine(memory).manifest("z")


async def test_a_decompression_bomb_in_the_store_fails_the_restore_cleanly(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = compressible_tree(tmp_path / "src")
    memory = MemoryStorage()
    await BackupEngine(memory, zstd_config(), sleep=sleep).backup(source, name="z")
    manifest = await BackupEngine(memory).manifest("z")
    ref = next(e for e in manifest.entries if e.path == "log.txt").chunks[1]
    memory.objects["chunks/" + ref] = zstd_bomb(50_000_000, declare=True)

    with pytest.raises(BackupFailed) as caught:
        await BackupEngine(memory, fast_config(), sleep=sleep).restore("z", tmp_path / "out")
    assert "decodes to more than the 65536 bytes" in str(caught.value)
    assert not (tmp_path / "out" / "log.txt").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if ".asyncbackup-" in p.name]
    report = await BackupEngine(memory).verify("z", deep=True)
    assert list(report.corrupt) == [ref] and report.corrupt[ref] == ["log.txt"]
