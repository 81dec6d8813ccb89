"""What a prune kept, removed, repacked and freed: the report and its summary line."""

from __future__ import annotations

from dataclasses import dataclass

from asyncbackup.retention import Decision


@dataclass(frozen=True)
class PruneReport:
    """What a prune kept, removed and freed (or, with ``dry_run``, would have)."""

    dry_run: bool
    grace: float
    decisions: list[Decision]
    chunks_deleted: int = 0
    bytes_freed: int = 0
    chunks_in_use: int = 0  # named by a kept backup
    chunks_young: int = 0  # unused, but written within the grace period or since the prune began
    bytes_young: int = 0
    leftovers: int = 0  # temporary files of writes a crash cut short (local store)
    orphan_indexes: int = 0  # INDEXes of no backup: a failed backup's, a killed prune's
    orphan_marks: int = 0  # source marks of no backup: a killed prune's, an older prune's
    packs_deleted: int = 0  # named by no kept backup (see repack.py)
    bytes_packs_deleted: int = 0
    packs_repacked: int = 0  # partly used past --max-unused: live chunks copied, then deleted
    bytes_repacked: int = 0  # their size, before
    packs_written: int = 0  # the new packs the repacked chunks went into
    bytes_written: int = 0
    packs_in_use: int = 0
    packs_young: int = 0  # unused, but written within the grace period
    bytes_packs_young: int = 0
    packs_over_cap: int = 0  # to repack, left for the next prune by --max-repack-size
    packs_small: int = 0  # of those repacked, the small ones merged (see packuse.SMALL_PACKS)

    @property
    def bytes_freed_by_packs(self) -> int:
        """What the pack work freed: unused packs, and repacked packs less the new ones."""
        return self.bytes_packs_deleted + self.bytes_repacked - self.bytes_written

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.kept]

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.kept]

    def decision_lines(self) -> list[str]:
        """One line per backup selected, group by group, newest first: kept (and by which
        rules), or removed; each names its group in brackets (unless there is one group)."""
        lines = []
        for d in self.decisions:
            when = d.finished.isoformat(timespec="seconds")
            group = f" [{d.group}]" if d.group else ""
            if d.kept:
                lines.append(f"keep {d.name} {when} ({', '.join(d.reasons)}){group}")
            else:
                verb = "would remove" if self.dry_run else "remove"
                lines.append(f"{verb} {d.name} {when}{group}")
        return lines

    def summary(self) -> str:
        """What was kept, removed and freed, in one line."""
        kept = _count(len(self.kept), "backup")
        removed = len(self.removed)
        chunks = (
            f"{_count(self.chunks_deleted, 'unused chunk')} ({self.bytes_freed / 2**20:.1f} MiB)"
        )
        if self.dry_run:
            head = (
                f"prune (dry run, nothing deleted): would keep {kept} and remove {removed}; "
                f"would delete {chunks}"
            )
        else:
            head = f"prune: kept {kept}, removed {removed}; deleted {chunks}"
        tail = f"; {self.chunks_in_use} chunks in use"
        if self.packs_in_use or self.packs_deleted or self.packs_young:
            tail += "; " + self._packs_line()
        if self.chunks_young:
            tail += (
                f"; {self.chunks_young} unused chunks ({self.bytes_young / 2**20:.1f} MiB) are "
                f"younger than the grace period ({self.grace:g} s) and stay"
            )
        if self.orphan_indexes:
            verb = "would remove" if self.dry_run else "removed"
            tail += f"; {verb} {_count(self.orphan_indexes, 'INDEX')} of no backup"
        if self.orphan_marks:
            verb = "would remove" if self.dry_run else "removed"
            tail += f"; {verb} {_count(self.orphan_marks, 'source mark')} of no backup"
        if self.leftovers:
            verb = "would remove" if self.dry_run else "removed"
            tail += (
                f"; {verb} {_count(self.leftovers, 'temporary file')} left by interrupted writes"
            )
        return head + tail

    def _packs_line(self) -> str:
        would = "would " if self.dry_run else ""
        line = (
            f"packs: {would}delete {_count(self.packs_deleted, 'unused pack')} "
            f"({_mib(self.bytes_packs_deleted)}), {would}repack {self.packs_repacked} "
            f"({_mib(self.bytes_repacked)})"
        )
        if self.packs_small:
            line += f" ({self.packs_small} of them small packs merged)"
        if self.packs_repacked:
            into = "about " if self.dry_run else ""
            line += f" into {into}{_count(self.packs_written, 'new pack')}"
        line += f", freeing {'about ' if self.dry_run else ''}{_mib(self.bytes_freed_by_packs)}"
        line += f"; {self.packs_in_use} packs in use"
        if self.packs_over_cap:
            line += (
                f" ({self.packs_over_cap} to repack left for the next prune by --max-repack-size)"
            )
        if self.packs_young:
            line += (
                f"; {_count(self.packs_young, 'unused pack')} ({_mib(self.bytes_packs_young)}) "
                "younger than the grace period stay"
            )
        return line


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
