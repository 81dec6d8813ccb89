"""Per-chunk compression: each chunk encoded on its own, in a worker thread; its key says how.

A chunk's key is ``chunks/<sha256 of the raw bytes><suffix>``: no suffix for a raw chunk (the
format every earlier backup used), ``.zst`` for zstd, ``.gz`` for gzip. The key, not a header in
the object, carries the codec, because:

- a listing of ``chunks/`` then tells what is stored *and how*, so dedup and ``verify`` need no
  object reads, and a restore knows how to decode a chunk before fetching it;
- raw chunks of old repositories keep their keys and bytes: a header could not be told apart from
  raw data that happens to begin with the same bytes;
- one raw chunk stored under two codecs is two keys, never one key whose bytes change meaning.

A chunk whose encoding is not smaller than the raw bytes is stored raw (no suffix), so the codec is
per chunk: the MANIFEST lists each chunk by its key's name (its *ref*), and that ref is the whole
truth about how to read it.

Decoding is bounded: a corrupt or hostile object may not expand past the chunk's expected size (a
few bytes of zstd can claim gigabytes), and the raw sha256 is checked after decoding, as ever.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import zstandard

from asyncbackup.errors import ConfigError, IntegrityError

Codec = Literal["none", "gzip", "zstd"]
CODECS: tuple[Codec, ...] = ("none", "gzip", "zstd")
SUFFIXES: dict[Codec, str] = {"none": "", "gzip": ".gz", "zstd": ".zst"}
DEFAULT_LEVELS: dict[Codec, int] = {"none": 0, "gzip": 6, "zstd": 3}
LEVEL_RANGES: dict[Codec, tuple[int, int]] = {"gzip": (1, 9), "zstd": (1, 22)}


@dataclass(frozen=True)
class Compression:
    """How chunks are compressed: a codec and its level (None: the codec's default).

    Raises:
        ConfigError: an unknown codec, a level out of the codec's range, or a level with "none".
    """

    codec: Codec = "none"
    level: int | None = None

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown compression {self.codec!r}: use one of {', '.join(CODECS)}")
        if self.level is None:
            object.__setattr__(self, "level", DEFAULT_LEVELS[self.codec])
            return
        if self.codec == "none":
            raise ConfigError("a compression level needs a codec: add --compression zstd or gzip")
        low, high = LEVEL_RANGES[self.codec]
        if not low <= self.level <= high:
            raise ConfigError(
                f"{self.codec} compression level must be between {low} and {high}, not {self.level}"
            )

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.codec]


def codec_of_ref(ref: str) -> Codec:
    """The codec a chunk ref's suffix names (``none`` for a plain digest)."""
    for codec, suffix in SUFFIXES.items():
        if suffix and ref.endswith(suffix):
            return codec
    return "none"


def encode(data: bytes, compression: Compression) -> tuple[bytes, Codec]:
    """``data`` encoded, and the codec actually used: ``none`` when encoding did not shrink it.

    Blocking (it releases the GIL): callers run it in a worker thread.
    """
    if compression.codec == "none" or not data:
        return data, "none"
    level = compression.level
    assert level is not None
    if compression.codec == "zstd":
        # One compressor per call: a ZstdCompressor is not safe to share between threads.
        encoded = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
    else:
        encoder = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip member
        encoded = encoder.compress(data) + encoder.flush()
    if len(encoded) >= len(data):
        return data, "none"
    return encoded, compression.codec


def decode(data: bytes, codec: Codec, *, limit: int, where: str) -> bytes:
    """The raw bytes of a stored chunk, refusing to produce more than ``limit`` bytes.

    Blocking (it releases the GIL): callers run it in a worker thread.

    Raises:
        IntegrityError: the bytes are not a valid stream of ``codec``, or expand past ``limit``.
    """
    if codec == "none":
        return data
    try:
        out = _zstd_bounded(data, limit) if codec == "zstd" else _gzip_bounded(data, limit)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise IntegrityError(f"{where} is corrupt: it does not decode as {codec} ({exc})") from exc
    if out is None:
        raise IntegrityError(
            f"{where} is corrupt: it decodes to more than the {limit} bytes its chunk may hold"
        )
    return out


def _zstd_bounded(data: bytes, limit: int) -> bytes | None:
    # Every chunk we write declares its size in the frame header (write_content_size): within
    # the limit, it is the one buffer decompress() allocates, and zstd refuses a frame that does
    # not fill it exactly; allow_extra_data=False refuses a second frame or trailing bytes.
    declared = zstandard.frame_content_size(data)
    if declared < 0:
        raise zstandard.ZstdError("the frame does not declare its size, as every chunk does")
    if declared > limit:
        return None
    return zstandard.ZstdDecompressor().decompress(
        data, max_output_size=limit, allow_extra_data=False
    )


def _gzip_bounded(data: bytes, limit: int) -> bytes | None:
    decoder = zlib.decompressobj(31)
    out = decoder.decompress(data, limit + 1)
    if len(out) > limit or decoder.unconsumed_tail:
        return None
    if not decoder.eof:
        raise zlib.error("the gzip stream is cut short")
    if decoder.unused_data:
        raise zlib.error("bytes follow the end of the gzip stream")
    return out


def encode_chunk(data: bytes, digest: str, compression: Compression) -> tuple[bytes, str, str]:
    """``data`` (whose raw sha256 is ``digest``) as it is to be stored: the bytes, their ref,
    and the sha256 of the stored bytes (what S3 checks on arrival). Blocking: run in a thread.
    """
    stored, codec = encode(data, compression)
    if codec == "none":
        return data, digest, digest
    return stored, digest + SUFFIXES[codec], hashlib.sha256(stored).hexdigest()


def preferred_refs(refs: Iterable[str], codec: Codec) -> dict[str, str]:
    """For each raw digest among ``refs``, the one ref to use: a chunk stored under any codec is
    reused rather than uploaded again, and the ref of ``codec`` wins when there are several
    (then raw, then any other), so a switch of codec converges on the chunks it asked for."""
    chosen: dict[str, str] = {}
    rank = {codec: 0, "none": 1}
    for ref in refs:
        digest = ref[:64]
        current = chosen.get(digest)
        if current is None or rank.get(codec_of_ref(ref), 2) < rank.get(codec_of_ref(current), 2):
            chosen[digest] = ref
    return chosen
