"""Reading a MANIFEST in pieces, so that parsing 100,000 entries never stalls the event loop.

A MANIFEST is laid out one entry per line (``manifest_encoding``). ``read_manifest`` parses it
in bounded trips to a worker thread: the head first, then ``LINES_PER_TRIP`` entry lines per
trip, then the checks of the whole tree ``CHECKS_PER_TRIP`` entries at a time. A parse trip is
one ``json.loads`` of a JSON array of its lines (one short C call), the checks of
those entries, and their count towards the totals. Between trips the coroutine awaits, so every
task ready on the loop runs before the next batch.

Why in pieces and not one thread call (measured by ``python -m benchmarks.incremental``): a
worker thread holds the GIL while it runs Python, and the loop gets it back only when the
interpreter forces a switch (every 5 ms) and the thread is on a core to hand it over. One call
that parses a whole MANIFEST keeps the loop waiting at each switch for as long as the machine
is slow to schedule it (506 ms measured on a loaded machine); a trip that ends hands the GIL
back for good, and the next one starts only after the loop has had its turn. A trip is kept to
a few milliseconds for the same reason: a longer one is cut by the switch interval, and each
cut costs the loop a wait for the GIL.

Why the entries cost the garbage collector nothing: ``FileEntry`` is untracked (``gc=False``),
and a trip of ``LINES_PER_TRIP`` lines allocates fewer tracked objects (the parsed dicts and
lists, gone when the trip ends) than the collector's first threshold, so a parse does not bring
on the full collections that walk every object of the process with the GIL held.

The bytes are decompressed a piece (``PIECE``) at a time as lines are needed, so neither the
whole decompressed document nor its lines are ever held at once; the decompressed size is
still bounded by ``limit``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import zstandard

from asyncbackup.errors import ManifestError, ManifestTooLarge
from asyncbackup.manifest import FileEntry, Manifest, Tally
from asyncbackup.manifest_checks import (
    TreeCheck,
    assemble,
    parse_document,
    parse_entry,
    parse_head,
)
from asyncbackup.manifest_encoding import MAX_DECODED_BYTES, ZSTD_MAGIC, decode
from asyncbackup.threads import to_thread

LINES_PER_TRIP = 100
"""Entry lines parsed per worker-thread trip: about a millisecond of work, and fewer new
container objects than the garbage collector's first threshold (700). On a loaded machine
shorter trips stall the loop less (a thread the system preempts while it holds the GIL holds
the loop too), and 1,000 trips for 100,000 entries cost about 0.1 s more than 100 would."""
CHECKS_PER_TRIP = 500
"""Entries whose place in the tree is checked per worker-thread trip, once all are read."""
PIECE = 1024 * 1024
_ENTRIES_OPEN = b',"entries":['
_END = b"]}"


async def read_manifest(data: bytes, *, where: str, limit: int = MAX_DECODED_BYTES) -> Manifest:
    """Parse and validate the MANIFEST ``data`` read from ``where``, in bounded worker-thread
    trips with the event loop free between them (see the module's docstring).

    Raises:
        ManifestTooLarge: it decompresses to more than ``limit`` bytes.
        ManifestError: it is not a valid MANIFEST (see ``Manifest.from_json``).
    """
    reader = _Reader(data, where=where, limit=limit)
    if not await to_thread(reader.start):
        return await to_thread(_whole, data, where=where, limit=limit)
    while not await to_thread(reader.next_batch):
        pass
    while not await to_thread(reader.check_batch):
        pass
    return await to_thread(reader.finish)


def parse_now(data: bytes, *, where: str, limit: int = MAX_DECODED_BYTES) -> Manifest:
    """``read_manifest``'s steps, run here and now (blocking): ``Manifest.from_json``.

    Raises:
        ManifestTooLarge: it decompresses to more than ``limit`` bytes.
        ManifestError: it is not a valid MANIFEST.
    """
    reader = _Reader(data, where=where, limit=limit)
    if not reader.start():
        return _whole(data, where=where, limit=limit)
    while not reader.next_batch():
        pass
    while not reader.check_batch():
        pass
    return reader.finish()


def _whole(data: bytes, *, where: str, limit: int) -> Manifest:
    """A MANIFEST that is valid JSON but not laid out by line (written by hand): read whole."""
    text = decode(data, where=where, limit=limit)
    with _errors_named(where):
        return parse_document(json.loads(text))


class _Reader:
    """One MANIFEST being parsed: its decompressed lines as they come, and the entries so far.
    Used by one thread trip at a time."""

    def __init__(self, data: bytes, *, where: str, limit: int) -> None:
        self.where = where
        self.limit = limit
        self._stream: BinaryIO
        if data.startswith(ZSTD_MAGIC):
            decompressor = zstandard.ZstdDecompressor()
            self._stream = decompressor.stream_reader(data, read_across_frames=True)
        else:
            self._stream = io.BytesIO(data)
        self._read = 0
        self._lines: list[bytes] = []
        self._tail = b""
        self._eof = False
        self._head: dict[str, Any] = {}
        self._version = self._chunk_size = 0
        self._entries: list[FileEntry] = []
        self._tree = TreeCheck()
        self._tally = Tally()
        self._checked = 0

    def start(self) -> bool:
        """Read and check the head; False if the MANIFEST is not laid out by line (then it is
        read whole).

        Raises:
            ManifestError: the head is not valid.
        """
        with _errors_named(self.where):
            lines = self._take(1)
            if not lines or not lines[0].endswith(_ENTRIES_OPEN):
                return False
            head = json.loads(lines[0][: -len(_ENTRIES_OPEN)] + b"}")
            if not isinstance(head, dict) or "entries" in head:
                return False
            self._version, self._chunk_size = parse_head(head)
            self._head = head
        return True

    def next_batch(self) -> bool:
        """Parse up to ``LINES_PER_TRIP`` more entries; True once the last was read.

        Raises:
            ManifestError: an entry is not valid, or the MANIFEST ends too soon or too late.
        """
        with _errors_named(self.where):
            lines = self._take(LINES_PER_TRIP)
            if _END not in lines and self._peek() == _END:  # this batch ends with the last
                lines += self._take(1)
            done = _END in lines
            if done:
                trailing = lines[lines.index(_END) + 1 :]
                del lines[lines.index(_END) :]
                if any(trailing) or any(self._rest()):
                    raise ManifestError("there is more after the end of the entries")
            elif len(lines) < LINES_PER_TRIP:
                raise ManifestError("the MANIFEST ends before its entries do (truncated?)")
            body = b"\n".join(line for line in lines if line)
            if body:
                # A line ends with a comma unless it is the last entry: the lines of a batch
                # are a JSON array once the comma of its last is taken off.
                if body.endswith(b",") == done:
                    raise ManifestError("the entry lines are not separated by commas")
                if not done:
                    body = body[:-1]
                raws = json.loads(b"[" + body + b"]")
                version, chunk_size = self._version, self._chunk_size
                batch = [parse_entry(raw, chunk_size, version) for raw in raws]
                self._tree.add(batch)
                self._tally.add(batch)
                self._entries += batch
        return done

    def check_batch(self) -> bool:
        """Check the place in the tree of up to ``CHECKS_PER_TRIP`` more entries, once all are
        read; True once the last is checked.

        Raises:
            ManifestError: an entry lies beneath a file or link, or is a bad hard link.
        """
        start, self._checked = self._checked, self._checked + CHECKS_PER_TRIP
        with _errors_named(self.where):
            self._tree.check(self._entries[start : self._checked])
        return self._checked >= len(self._entries)

    def finish(self) -> Manifest:
        """The Manifest, once every entry is read and checked (``check_batch``).

        Raises:
            ManifestError: a field of the head is not valid.
        """
        entries, self._entries = tuple(self._entries), []
        with _errors_named(self.where):
            return assemble(self._head, entries, counted=self._tally.totals())

    def _take(self, count: int) -> list[bytes]:
        while len(self._lines) < count and not self._eof:
            self._fill()
        taken = self._lines[:count]
        del self._lines[:count]
        return taken

    def _peek(self) -> bytes | None:
        while not self._lines and not self._eof:
            self._fill()
        return self._lines[0] if self._lines else None

    def _rest(self) -> list[bytes]:
        while not self._eof:
            self._fill()
        rest, self._lines = self._lines, []
        return rest

    def _fill(self) -> None:
        try:
            piece = self._stream.read(PIECE)
        except zstandard.ZstdError as exc:
            raise ManifestError(f"the MANIFEST's compressed data is damaged ({exc})") from exc
        if not piece:
            self._eof = True
            if self._tail:
                self._lines.append(self._tail)
                self._tail = b""
            return
        self._read += len(piece)
        if self._read > self.limit:
            raise ManifestTooLarge(
                f"{self.where}: the MANIFEST decompresses to more than {self.limit:,} bytes, "
                "over the limit; if the backup really is that large, raise the limit "
                "(--max-manifest-size, EngineConfig.max_manifest_size), else the file was "
                "written by someone else: delete that backup"
            )
        lines = (self._tail + piece).split(b"\n")
        self._tail = lines.pop()
        self._lines += lines


@contextmanager
def _errors_named(where: str) -> Iterator[None]:
    """Every error of parsing as a ManifestError that names the MANIFEST."""
    try:
        yield
    except ManifestTooLarge:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where}: the MANIFEST is not valid JSON ({exc})") from exc
    except ManifestError as exc:
        if str(exc).startswith(where):
            raise
        raise ManifestError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"{where}: the MANIFEST is malformed ({exc!r})") from exc
