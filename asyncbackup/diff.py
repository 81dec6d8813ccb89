"""``asyncbackup diff``: what was added, removed and changed between two backups.

Two MANIFESTs are compared path by path; no chunk is downloaded. An entry counts as changed when
its type, size, mode, content (the sha256 of the whole file) or link target differs. A change of
mtime alone is not reported: a directory's mtime moves whenever anything inside it does, and
content equal by hash is the same file whatever its clock says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from asyncbackup.manifest import FileEntry, Manifest
from asyncbackup.show import printable

Status = Literal["added", "removed", "changed"]
_MARK: dict[Status, str] = {"added": "+", "removed": "-", "changed": "M"}


@dataclass(frozen=True)
class Change:
    """One path that differs between the two backups; ``fields`` says how, for a change."""

    path: str
    status: Status
    before: FileEntry | None  # None when added
    after: FileEntry | None  # None when removed
    fields: tuple[str, ...] = ()  # of "type", "size", "mode", "content", "target"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "status": self.status}
        if self.fields:
            out["fields"] = list(self.fields)
        out["before"] = _brief(self.before)
        out["after"] = _brief(self.after)
        return out


@dataclass(frozen=True)
class BackupDiff:
    """Every difference from backup ``old`` to backup ``new``, sorted by path."""

    old: str
    new: str
    changes: tuple[Change, ...]

    def count(self, status: Status) -> int:
        return sum(1 for c in self.changes if c.status == status)

    def document(self) -> dict[str, Any]:
        """The diff for a script: both names, counts, and each change with both sides."""
        return {
            "old": self.old,
            "new": self.new,
            "added": self.count("added"),
            "removed": self.count("removed"),
            "changed": self.count("changed"),
            "changes": [c.to_json() for c in self.changes],
        }

    def lines(self) -> list[str]:
        """One line per change, for a person: ``+ path``, ``- path``, ``M path (how)``."""
        out = []
        for change in self.changes:
            entry = change.after or change.before
            assert entry is not None
            path = printable(change.path) + ("/" if entry.type == "dir" else "")
            how = f"  ({_explain(change)})" if change.status == "changed" else ""
            out.append(f"{_MARK[change.status]} {path}{how}")
        return out

    def summary(self) -> str:
        return (
            f"{self.old} -> {self.new}: {self.count('added')} added, "
            f"{self.count('removed')} removed, {self.count('changed')} changed"
        )


def diff(old: Manifest, new: Manifest) -> BackupDiff:
    """Compare two MANIFESTs entry by entry (pure: run it in a thread for large ones)."""
    before = {e.path: e for e in old.entries}
    after = {e.path: e for e in new.entries}
    changes: list[Change] = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is None:
            changes.append(Change(path, "added", None, b))
        elif b is None:
            changes.append(Change(path, "removed", a, None))
        elif fields := _differences(a, b):
            changes.append(Change(path, "changed", a, b, fields))
    return BackupDiff(old.name, new.name, tuple(changes))


def _differences(a: FileEntry, b: FileEntry) -> tuple[str, ...]:
    if a.type != b.type:
        return ("type",)
    fields = []
    if a.size != b.size:
        fields.append("size")
    if a.mode != b.mode:
        fields.append("mode")
    if a.sha256 != b.sha256:
        fields.append("content")
    if a.target != b.target:
        fields.append("target")
    return tuple(fields)


def _explain(change: Change) -> str:
    a, b = change.before, change.after
    assert a is not None and b is not None
    parts = []
    for field in change.fields:
        if field == "type":
            parts.append(f"type {a.type} -> {b.type}")
        elif field == "size":
            parts.append(f"size {a.size:,} -> {b.size:,}")
        elif field == "mode":
            parts.append(f"mode {a.mode:04o} -> {b.mode:04o}")
        elif field == "content":
            parts.append(f"content {a.sha256[:12]} -> {b.sha256[:12]}")
        else:
            parts.append(f"target {printable(a.target)} -> {printable(b.target)}")
    return ", ".join(parts)


def _brief(entry: FileEntry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    out: dict[str, Any] = {"type": entry.type, "mode": entry.mode, "mtime_ns": entry.mtime_ns}
    if entry.type == "file":
        out.update(size=entry.size, sha256=entry.sha256)
    elif entry.type == "symlink":
        out["target"] = entry.target
    return out
