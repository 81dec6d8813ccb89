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

Why one entry per line: parsing is incremental. A single ``json.loads`` of a 14 MB document holds
the GIL for over a second, so even in a worker thread it freezes the event loop; one small
``json.loads`` per line lets the interpreter hand the GIL back to the loop between lines (every
5 ms at most, ``sys.getswitchinterval``). Decompression itself releases the GIL.

Older MANIFESTs (format 1 and 2) are the same document, uncompressed; both are read. A document
that is valid JSON but not laid out by line (written by hand) is still read, whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import zstandard

from asyncbackup.errors import ManifestError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEAD_READ = 64 * 1024
"""How many bytes ``list`` reads of each MANIFEST: the head's frame is far smaller."""
MAX_DECODED_BYTES = 1024 * 1024 * 1024
"""A MANIFEST that decompresses to more than this is refused, not held: a few bytes of zstd can
claim terabytes. 1 GiB is about five million entries."""
_ENTRIES_OPEN = ',"entries":['
_LEVEL = 3


def encode(head_line: bytes, entry_lines: bytes) -> bytes:
    """The stored bytes of a MANIFEST: the head line and the entry lines, each a zstd frame.

    Blocking (zstd releases the GIL): callers run it in a worker thread.
    """
    compressor = zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True)
    return compressor.compress(head_line) + compressor.compress(entry_lines)


def decode(data: bytes, *, where: str) -> str:
    """The MANIFEST's JSON text: decompressed if it is zstd, as it is otherwise (formats 1, 2).

    Raises:
        ManifestError: the zstd data is damaged, or expands past ``MAX_DECODED_BYTES``.
    """
    if not data.startswith(ZSTD_MAGIC):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{where}: the MANIFEST is not valid JSON ({exc})") from exc
    out = bytearray()
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    try:
        while piece := reader.read(1024 * 1024):
            out += piece
            if len(out) > MAX_DECODED_BYTES:
                raise ManifestError(
                    f"{where}: the MANIFEST expands past {MAX_DECODED_BYTES >> 20} MiB; "
                    "it is damaged or was not written by asyncbackup"
                )
    except zstandard.ZstdError as exc:
        raise ManifestError(f"{where}: the MANIFEST's compressed data is damaged ({exc})") from exc
    try:
        return out.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where}: the MANIFEST is not valid JSON ({exc})") from exc


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


def split_lines(text: str) -> tuple[dict[str, Any], Iterator[Any]] | None:
    """The head and an iterator over the raw entries of a MANIFEST laid out by line, parsed one
    line at a time; None when the text is not laid out so (the caller parses it whole).

    The iterator raises ``json.JSONDecodeError`` on a damaged line.
    """
    end = text.find("\n")
    head = _parse_head_line(text[: end + 1]) if end >= 0 else None
    if head is None or not text.endswith("\n]}\n"):
        return None
    return head, _entries(text, end + 1, len(text) - len("]}\n"))


def _entries(text: str, start: int, stop: int) -> Iterator[Any]:
    position = start
    while position < stop:
        end = text.find("\n", position, stop)
        if end < 0:
            end = stop
        line = text[position:end]
        position = end + 1
        if line:
            yield json.loads(line[:-1] if line.endswith(",") else line)


def _parse_head_line(line: str) -> dict[str, Any] | None:
    line = line.rstrip("\n")
    if not line.endswith(_ENTRIES_OPEN):
        return None
    try:
        head = json.loads(line[: -len(_ENTRIES_OPEN)] + "}")
    except json.JSONDecodeError:
        return None
    return head if isinstance(head, dict) else None
