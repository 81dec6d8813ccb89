"""Which backups a retention policy keeps: restic's ``forget`` rules, on UTC days and ISO weeks.

Backups are first **filtered** (``hosts``, ``sources``, ``tags``: a backup the filters do not
select is not considered at all, and stays), then **grouped** (by default by host and source
path, as restic groups by host and paths, so that ``--keep-last 1`` on a store shared by two
machines keeps the newest backup of each). Within each group, backups are taken newest first, by
the time their MANIFEST says they finished, and each rule keeps up to N of them, one per bucket;
a backup kept by any rule is kept:

- ``keep_last`` N: the N newest backups (each backup is a bucket of its own).
- ``keep_daily`` N: the newest backup of each of the last N UTC days that have backups.
- ``keep_weekly`` N: the newest backup of each of the last N ISO weeks (Monday to Sunday, UTC)
  that have backups.
- ``keep_monthly`` N, ``keep_yearly`` N: the same over UTC calendar months and years.
- ``keep_within`` D: every backup that finished within D seconds before the group's newest one
  (restic measures from the newest snapshot too, not from now: a store nobody backed up to for a
  month still keeps its last D worth).

Days, weeks, months and years without backups do not count: ``keep_daily 7`` over a month with
backups on 3 days a week keeps the newest of each of the last 7 days that had one, reaching back
over two weeks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from asyncbackup.errors import ConfigError

GROUP_KEYS = ("host", "source")
"""What backups may be grouped by: ``group_by`` is a subset, in this order."""


@dataclass(frozen=True)
class Candidate:
    """What retention needs of one backup."""

    name: str
    finished: datetime
    host: str = ""
    source: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """How many backups each rule keeps, within each group of the backups selected.

    ``group_by``: ``("host", "source")`` (the default), ``("host",)``, ``("source",)`` or ``()``
    (one group). ``hosts``, ``sources``: only backups of these (empty: any). ``tags``: only
    backups that carry every tag of at least one of these sets (empty: any).

    Raises:
        ConfigError: a count or duration is negative, every rule keeps nothing (that would
            remove every backup selected), or ``group_by`` names something else.
    """

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: float = 0.0
    group_by: tuple[str, ...] = GROUP_KEYS
    hosts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    tags: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        counts = {
            "--keep-last": self.keep_last,
            "--keep-daily": self.keep_daily,
            "--keep-weekly": self.keep_weekly,
            "--keep-monthly": self.keep_monthly,
            "--keep-yearly": self.keep_yearly,
            "--keep-within": self.keep_within,
        }
        for label, value in counts.items():
            if value < 0:
                raise ConfigError(f"{label} must not be negative, not {value:g}")
        if not any(counts.values()):
            raise ConfigError(
                "prune needs at least one of --keep-last, --keep-daily, --keep-weekly, "
                "--keep-monthly, --keep-yearly or --keep-within above 0: with none, it would "
                "remove every backup"
            )
        if any(key not in GROUP_KEYS for key in self.group_by) or len(set(self.group_by)) != len(
            self.group_by
        ):
            raise ConfigError(
                f"cannot group backups by {','.join(self.group_by)!r}: use host,source, host, "
                "source or none"
            )

    def selects(self, backup: Candidate) -> bool:
        """Whether the filters let ``backup`` be considered at all."""
        if self.hosts and backup.host not in self.hosts:
            return False
        if self.sources and backup.source not in self.sources:
            return False
        return not self.tags or any(set(wanted) <= set(backup.tags) for wanted in self.tags)

    def group_of(self, backup: Candidate) -> str:
        """The group ``backup`` falls in, as the dry run names it ('' with ``group_by=()``)."""
        parts = {"host": f"host {backup.host}", "source": f"source {backup.source}"}
        return ", ".join(parts[key] for key in self.group_by)


@dataclass(frozen=True)
class Decision:
    """One backup, its group, and the rules that keep it (none: it is to be removed)."""

    name: str
    finished: datetime
    reasons: tuple[str, ...]
    group: str = ""

    @property
    def kept(self) -> bool:
        return bool(self.reasons)


def _day(t: datetime) -> Hashable:
    return t.date()


def _week(t: datetime) -> Hashable:
    year, week, _ = t.isocalendar()
    return (year, week)


def _month(t: datetime) -> Hashable:
    return (t.year, t.month)


def _year(t: datetime) -> Hashable:
    return t.year


def _label(rule: str, t: datetime) -> str:
    if rule == "daily":
        return f"daily {t.date().isoformat()}"
    if rule == "weekly":
        year, week, _ = t.isocalendar()
        return f"weekly {year}-W{week:02d}"
    if rule == "monthly":
        return f"monthly {t.year}-{t.month:02d}"
    return f"yearly {t.year}"


def decide(
    backups: Sequence[Candidate | tuple[str, datetime]], policy: RetentionPolicy
) -> list[Decision]:
    """A decision for each backup the policy selects, group by group (in order of their names),
    newest first within each; backups it does not select get none, and stay."""
    candidates = [b if isinstance(b, Candidate) else Candidate(*b) for b in backups]
    groups: dict[str, list[Candidate]] = {}
    for backup in candidates:
        if policy.selects(backup):
            groups.setdefault(policy.group_of(backup), []).append(backup)
    decisions: list[Decision] = []
    for group in sorted(groups):
        decisions += _decide_group(group, groups[group], policy)
    return decisions


def _decide_group(group: str, backups: list[Candidate], policy: RetentionPolicy) -> list[Decision]:
    ordered = sorted(backups, key=lambda b: (b.finished, b.name), reverse=True)
    reasons: dict[str, list[str]] = {b.name: [] for b in ordered}
    for rank, backup in enumerate(ordered[: policy.keep_last], start=1):
        reasons[backup.name].append(f"last {rank}")
    if policy.keep_within:
        since = ordered[0].finished - timedelta(seconds=policy.keep_within)
        for backup in ordered:
            if backup.finished >= since:
                reasons[backup.name].append(f"within {_duration(policy.keep_within)}")
    rules: list[tuple[str, int, Callable[[datetime], Hashable]]] = [
        ("daily", policy.keep_daily, _day),
        ("weekly", policy.keep_weekly, _week),
        ("monthly", policy.keep_monthly, _month),
        ("yearly", policy.keep_yearly, _year),
    ]
    for rule, count, bucket_of in rules:
        seen: Hashable = None
        for backup in ordered:
            if count == 0:
                break
            bucket = bucket_of(backup.finished)
            if bucket != seen:  # the newest backup of a bucket not seen yet
                seen = bucket
                count -= 1
                reasons[backup.name].append(_label(rule, backup.finished))
    return [Decision(b.name, b.finished, tuple(reasons[b.name]), group) for b in ordered]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
