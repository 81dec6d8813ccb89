"""The MANIFEST round-trips, and a hostile or broken one is refused before anything is written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from asyncbackup import FileEntry, Manifest, ManifestError

D1, D2 = "a" * 64, "b" * 64


def manifest(*entries: FileEntry) -> Manifest:
    return Manifest(
        name="n",
        job_id="j",
        started="2026-01-01T00:00:00+00:00",
        finished="2026-01-01T00:00:01+00:00",
        host="h",
        source="/src",
        chunk_size=4,
        entries=entries,
    )


def good() -> Manifest:
    return manifest(
        FileEntry("d", "dir", 0o755, 1),
        FileEntry("d/f", "file", 0o644, 2, size=6, sha256=D1, chunks=(D1, D2)),
        FileEntry("d/\udcff-not-utf8", "file", 0o600, 3, size=0, sha256=D2),
        FileEntry("l", "symlink", 0o777, 4, target="d/f"),
    )


def test_round_trip_keeps_every_field_and_counts_totals() -> None:
    original = good()
    data = original.to_json()
    data.decode("ascii")  # non-UTF-8 names travel as escapes
    again = Manifest.from_json(data, where="test")
    assert again == original
    assert again.totals.files == 2 and again.totals.bytes == 6 and again.totals.unique_chunks == 2
    assert json.loads(data)["totals"]["symlinks"] == 1


def edited(change: Any) -> bytes:
    doc = json.loads(good().to_json())
    change(doc)
    return json.dumps(doc).encode()


def set_path(index: int, path: str) -> Any:
    return lambda doc: doc["entries"][index].__setitem__("path", path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (edited(lambda d: d.__setitem__("format_version", 99)), "format_version 99"),
        (edited(set_path(1, "../outside")), "unsafe path '../outside'"),
        (edited(set_path(1, "/etc/passwd")), "unsafe path '/etc/passwd'"),
        (edited(set_path(1, "d/../../x")), "unsafe path"),
        (edited(set_path(1, "d//f")), "unsafe path"),
        (edited(set_path(1, "")), "unsafe path"),
        (edited(set_path(1, "l/evil")), "beneath 'l', which is a symlink"),
        (edited(set_path(3, "d")), "'d' appears twice"),
        (edited(lambda d: d["entries"][1].__setitem__("chunks", [D1])), "1 chunks cannot hold 6"),
        (edited(lambda d: d["entries"][1].__setitem__("sha256", "xyz")), "bad size or sha256"),
        (edited(lambda d: d["entries"][1].__setitem__("mode", 0o10000)), "out of range"),
        (edited(lambda d: d["entries"][0].__setitem__("type", "fifo")), "unknown entry type"),
        (edited(lambda d: d["entries"][1].pop("size")), "malformed"),
    ],
)
def test_bad_manifests_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(data, where="store/backups/n/MANIFEST")
