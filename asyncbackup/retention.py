"""Which backups a retention policy keeps: restic's ``forget`` rules, on UTC days and ISO weeks.

Backups are taken newest first, by the time their MANIFEST says they finished. Each rule keeps
up to N backups, one per bucket, and a backup kept by any rule is kept:

- ``keep_last`` N: the N newest backups (each backup is a bucket of its own).
- ``keep_daily`` N: the newest backup of each of the last N UTC days that have backups.
- ``keep_weekly`` N: the newest backup of each of the last N ISO weeks (Monday to Sunday, UTC)
  that have backups.

Days and weeks without backups do not count: ``keep_daily 7`` over a month with backups on 3 days
a week keeps the newest of each of the last 7 days that had one, reaching back over two weeks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime

from asyncbackup.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """How many backups each rule keeps; at least one rule must keep something.

    Raises:
        ConfigError: a count is negative, or every count is zero (that would remove every backup).
    """

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    def __post_init__(self) -> None:
        for label, value in (
            ("--keep-last", self.keep_last),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
        ):
            if value < 0:
                raise ConfigError(f"{label} must not be negative, not {value}")
        if not (self.keep_last or self.keep_daily or self.keep_weekly):
            raise ConfigError(
                "prune needs at least one of --keep-last, --keep-daily or --keep-weekly "
                "above 0: with none, it would remove every backup"
            )


@dataclass(frozen=True)
class Decision:
    """One backup and the rules that keep it (none: it is to be removed)."""

    name: str
    finished: datetime
    reasons: tuple[str, ...]

    @property
    def kept(self) -> bool:
        return bool(self.reasons)


def _day(t: datetime) -> Hashable:
    return t.date()


def _week(t: datetime) -> Hashable:
    year, week, _ = t.isocalendar()
    return (year, week)


def _label(rule: str, t: datetime) -> str:
    if rule == "daily":
        return f"daily {t.date().isoformat()}"
    year, week, _ = t.isocalendar()
    return f"weekly {year}-W{week:02d}"


def decide(backups: Sequence[tuple[str, datetime]], policy: RetentionPolicy) -> list[Decision]:
    """Each backup (name, finished time in UTC), newest first, with the rules that keep it."""
    ordered = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    reasons: dict[str, list[str]] = {name: [] for name, _ in ordered}
    last = 0
    for name, _ in ordered:
        if last < policy.keep_last:
            last += 1
            reasons[name].append(f"last {last}")
    rules: list[tuple[str, int, Callable[[datetime], Hashable]]] = [
        ("daily", policy.keep_daily, _day),
        ("weekly", policy.keep_weekly, _week),
    ]
    for rule, count, bucket_of in rules:
        seen: Hashable = None
        for name, finished in ordered:
            if count == 0:
                break
            bucket = bucket_of(finished)
            if bucket != seen:  # the newest backup of a bucket not seen yet
                seen = bucket
                count -= 1
                reasons[name].append(_label(rule, finished))
    return [Decision(name, finished, tuple(reasons[name])) for name, finished in ordered]
