"""How a MANIFEST is laid out in bytes: two zstd frames, the head first, then the entries.

A MANIFEST of format 3 is the concatenation of two zstd frames. Decompressed, they are one JSON
document, laid out as this project has always written it:

    {"format_version":3,"name":...,"totals":{...},"tags":[...],"parent":...,"entries":[   frame 1
    {"path":"a","type":"dir",...},                                                          frame 2
    {"path":"a/f","type":"file",...}
    ]}

Why two frames: ``list`` needs the head alone (name, times, host, source, totals, tags). It reads
the first ``HEAD_READ`` bytes with a range request and decompresses the first frame only, so
listing a store costs one small GET per backup, whatever the size of each backup. The head is its
own frame because a zstd frame cannot be decoded before its beginning, and a frame of its own
keeps the head's compressed length small and independent of the entries.

Why one entry per line: parsing is incremental (``manifest_reader``): a thousand lines at a time
are one ``json.loads`` of a JSON array, in a worker-thread trip of a few milliseconds, and the
event loop runs between trips. A single ``json.loads`` of a 14 MB document holds the GIL for
over a second, so even in a worker thread it freezes the event loop. Decompression itself
releases the GIL, and it is done a piece at a time as lines are needed. The entries' frame is
written a piece at a time too (``encode_pieces``), so it carries no content size.

Older MANIFESTs (format 1 and 2) are the same document, uncompressed; both are read. A document
that is valid JSON but not laid out by line (written by hand) is still read, whole, within the
size limits of ``repository.load_manifest``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import zstandard

from asyncbackup.errors import ManifestError, ManifestTooLarge

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEAD_READ = 64 * 1024
"""How many bytes ``list`` reads of each MANIFEST: the head's frame is far smaller."""
MAX_DECODED_BYTES = 1024 * 1024 * 1024
"""The default bound of a decompressed MANIFEST (callers pass ``max_manifest_size``): one that
decompresses to more is refused, not held, for a few bytes of zstd can claim terabytes."""
_ENTRIES_OPEN = ',"entries":['
_LEVEL = 3


def encode(head_line: bytes, entry_lines: bytes) -> bytes:
    """The stored bytes of a MANIFEST: the head line and the entry lines, each a zstd frame.

    Blocking (zstd releases the GIL): callers run it in a worker thread.
    """
    compressor = zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True)
    return compressor.compress(head_line) + compressor.compress(entry_lines)


def encode_pieces(head_line: bytes, entry_pieces: Iterable[bytes]) -> bytes:
    """``encode``, with the entry lines given in pieces and compressed as they come: a frame
    of unknown content size (readers stream it), and no copy of every line at once.

    Blocking (zstd releases the GIL): callers run it in a worker thread.
    """
    compressor = zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True)
    out = [compressor.compress(head_line)]
    stream = compressor.compressobj()
    out += (stream.compress(piece) for piece in entry_pieces)
    out.append(stream.flush())
    return b"".join(out)


def decode(data: bytes, *, where: str, limit: int = MAX_DECODED_BYTES) -> bytes:
    """The MANIFEST's JSON: decompressed if it is zstd, as it is otherwise (formats 1, 2).

    Raises:
        ManifestTooLarge: it decompresses to more than ``limit`` bytes (not held: refused).
        ManifestError: the zstd data is damaged.
    """
    if not data.startswith(ZSTD_MAGIC):
        return data
    out = bytearray()
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    try:
        while piece := reader.read(1024 * 1024):
            out += piece
            if len(out) > limit:
                raise ManifestTooLarge(
                    f"{where}: the MANIFEST decompresses to more than {limit:,} bytes, over the "
                    "limit; if the backup really is that large, raise the limit "
                    "(--max-manifest-size, EngineConfig.max_manifest_size), else the file was "
                    "written by someone else: delete that backup"
                )
    except zstandard.ZstdError as exc:
        raise ManifestError(f"{where}: the MANIFEST's compressed data is damaged ({exc})") from exc
    return bytes(out)


def head_of(prefix: bytes) -> dict[str, Any] | None:
    """The head of a MANIFEST from its first bytes (``HEAD_READ`` of them, or all), or None if
    they do not hold a whole head (then the caller reads the MANIFEST in full)."""
    if prefix.startswith(ZSTD_MAGIC):
        try:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            text = decompressor.decompress(prefix)  # stops at the end of the first frame
        except zstandard.ZstdError:
            return None
        if not decompressor.eof:
            return None
        first_line = text.decode("ascii", errors="replace")
    else:
        end = prefix.find(b"\n")
        if end < 0:
            return None
        first_line = prefix[: end + 1].decode("utf-8", errors="replace")
    return _parse_head_line(first_line)


def _parse_head_line(line: str) -> dict[str, Any] | None:
    line = line.rstrip("\n")
    if not line.endswith(_ENTRIES_OPEN):
        return None
    try:
        head = json.loads(line[: -len(_ENTRIES_OPEN)] + "}")
    except json.JSONDecodeError:
        return None
    return head if isinstance(head, dict) else None
