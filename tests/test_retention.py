"""Retention by group (host and source, as restic's forget), the monthly, yearly and within
rules, the --host/--source/--tag filters, and tags from backup to list, show and prune."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupEngine, ConfigError, open_storage
from asyncbackup.backup_options import BackupOptions
from asyncbackup.retention import Candidate, RetentionPolicy, decide
from tests.conftest import assert_same_tree, fast_config
from tests.test_cli import EXIT_OK, EXIT_USAGE, cli, list_json
from tests.test_prune import write_source

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # a Monday


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def kept(backups: list[Candidate], **policy: Any) -> dict[str, tuple[str, ...]]:
    return {d.name: d.reasons for d in decide(backups, RetentionPolicy(**policy)) if d.kept}


def test_keep_monthly_and_yearly_keep_the_newest_of_each_calendar_period() -> None:
    backups = [
        Candidate("2024-dec", utc("2024-12-31T23:00")),
        Candidate("2025-jun", utc("2025-06-15T00:00")),
        Candidate("2025-dec-a", utc("2025-12-01T00:00")),
        Candidate("2025-dec-b", utc("2025-12-20T00:00")),
        # no backup in January 2026: it does not count as one of the months
        Candidate("2026-feb", utc("2026-02-10T00:00")),
    ]
    assert kept(backups, keep_monthly=3, group_by=()) == {
        "2026-feb": ("monthly 2026-02",),
        "2025-dec-b": ("monthly 2025-12",),
        "2025-jun": ("monthly 2025-06",),
    }
    assert kept(backups, keep_yearly=5, group_by=()) == {
        "2026-feb": ("yearly 2026",),
        "2025-dec-b": ("yearly 2025",),
        "2024-dec": ("yearly 2024",),
    }


def test_keep_within_counts_back_from_the_newest_backup_of_the_group() -> None:
    backups = [Candidate(f"b{i}", T0 - timedelta(days=i)) for i in range(10)]
    # A store nobody backed up to for a month still keeps its last 3 days' worth.
    assert kept(backups, keep_within=3 * 86400, group_by=()) == {
        f"b{i}": ("within 3d",) for i in range(4)
    }


def test_each_host_and_source_is_a_group_of_its_own_by_default() -> None:
    backups = [
        Candidate("db-1", T0, "db", "/srv/db"),
        Candidate("db-2", T0 + timedelta(hours=1), "db", "/srv/db"),
        Candidate("web-1", T0 - timedelta(days=5), "web", "/srv/www"),
        Candidate("db-etc", T0 - timedelta(days=3), "db", "/etc"),
    ]
    decisions = decide(backups, RetentionPolicy(keep_last=1))
    assert [(d.name, d.kept, d.group) for d in decisions] == [
        ("db-etc", True, "host db, source /etc"),
        ("db-2", True, "host db, source /srv/db"),
        ("db-1", False, "host db, source /srv/db"),
        ("web-1", True, "host web, source /srv/www"),
    ]
    by_host = {d.name for d in decide(backups, RetentionPolicy(keep_last=1, group_by=("host",)))
               if d.kept}  # fmt: skip
    assert by_host == {"db-2", "web-1"}
    assert {
        d.name for d in decide(backups, RetentionPolicy(keep_last=1, group_by=())) if d.kept
    } == {"db-2"}


def test_filters_leave_the_backups_they_do_not_select_alone() -> None:
    backups = [
        Candidate("a1", T0, "db", "/srv", ("daily",)),
        Candidate("a2", T0 + timedelta(hours=1), "db", "/srv", ("daily", "db")),
        Candidate("b1", T0, "web", "/srv", ("daily",)),
        Candidate("b2", T0 + timedelta(hours=1), "web", "/srv", ()),
    ]
    assert [d.name for d in decide(backups, RetentionPolicy(keep_last=1, hosts=("web",)))] == [
        "b2",
        "b1",
    ]
    tagged = decide(backups, RetentionPolicy(keep_last=1, tags=(("daily",),), group_by=()))
    assert [(d.name, d.kept) for d in tagged] == [("a2", True), ("b1", False), ("a1", False)]
    both = decide(backups, RetentionPolicy(keep_last=1, tags=(("daily", "db"), ("nothing",))))
    assert [d.name for d in both] == ["a2"]
    assert [d.name for d in decide(backups, RetentionPolicy(keep_last=9, sources=("/x",)))] == []


def test_a_tag_must_be_a_plain_word() -> None:
    for bad in ("", "a,b", "has space", "-dash-first", "x" * 101):
        with pytest.raises(ConfigError, match="invalid tag"):
            BackupOptions(tags=(bad,))
    assert BackupOptions(tags=("env=prod", "team/db", "v1.2")).tags == (
        "env=prod",
        "team/db",
        "v1.2",
    )


async def test_prune_keeps_backups_its_filters_do_not_select_and_their_chunks(
    tmp_path: Path,
) -> None:
    """The mark covers every backup that stays, selected or not: a filtered prune never
    sweeps the chunks of backups it was told to leave alone."""
    from asyncbackup import MemoryStorage

    memory = MemoryStorage(clock=T0.timestamp)
    sources = {}
    for i, name in enumerate(["web-old", "web-new", "db-only"]):
        source = write_source(tmp_path / name, name)
        tags = ("web",) if name.startswith("web") else ("db",)
        when = T0 + timedelta(hours=i)
        engine = BackupEngine(memory, fast_config(), clock=lambda when=when: when)  # type: ignore[misc]
        await engine.backup(source, name=name, options=BackupOptions(tags=tags))
        sources[name] = source
    report = await BackupEngine(memory, clock=lambda: T0 + timedelta(days=1)).prune(
        RetentionPolicy(keep_last=1, tags=(("web",),), group_by=()), grace=0
    )
    assert [(d.name, d.kept) for d in report.decisions] == [("web-new", True), ("web-old", False)]
    assert report.chunks_deleted == 2  # web-old's own two chunks; db-only's all stay
    for name in ("web-new", "db-only"):
        await BackupEngine(memory).restore(name, tmp_path / "out" / name)
        assert_same_tree(sources[name], tmp_path / "out" / name)


# Through the command line


def test_two_sources_in_one_store_keep_last_1_keeps_the_newest_of_each(tmp_path: Path) -> None:
    store = tmp_path / "store"
    host = socket.gethostname()
    etc, www = tmp_path / "etc", tmp_path / "www"
    for round_ in range(2):
        for name, source in (("etc", etc), ("www", www)):
            write_source(source, f"{name}-{round_}")
            (source / "round.txt").write_text(f"{round_}\n")
            tag = ["--tag", "nightly"] if round_ else []
            made = cli("backup", source, store, "--name", f"{name}-{round_}", "--chunk-size",
                       "64K", "--tag", name, *tag)  # fmt: skip
            assert made.returncode == EXIT_OK, made.stderr

    listing = {b["name"]: b for b in list_json(store)}
    assert listing["www-1"]["host"] == host and listing["www-1"]["source"] == str(www)
    assert listing["www-1"]["tags"] == ["www", "nightly"]
    assert listing["etc-0"]["tags"] == ["etc"]
    text = cli("list", store)
    assert f"{host}:{www}  [www, nightly]" in text.stdout
    shown = cli("show", store, "etc-1")
    assert "tags            etc, nightly" in shown.stdout
    assert json.loads(cli("show", store, "etc-1", "--json").stdout)["tags"] == ["etc", "nightly"]

    dry = cli("prune", store, "--keep-last", "1", "--grace", "0s", "--dry-run")
    assert dry.returncode == EXIT_OK, dry.stderr
    lines = dry.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("keep etc-1 ") and lines[0].endswith(
        f"(last 1) [host {host}, source {etc}]"
    )
    assert lines[1].startswith("would remove etc-0 ") and lines[1].endswith(
        f"[host {host}, source {etc}]"
    )
    assert lines[2].startswith("keep www-1 ") and lines[2].endswith(f"[host {host}, source {www}]")
    assert lines[3].startswith("would remove www-0 ")

    only_www = cli("prune", store, "--keep-last", "1", "--grace", "0s", "--source", str(www))
    assert only_www.returncode == EXIT_OK, only_www.stderr
    assert sorted(str(b["name"]) for b in list_json(store)) == ["etc-0", "etc-1", "www-1"]
    by_tag = cli("prune", store, "--keep-last", "1", "--grace", "0s", "--tag", "etc",
                 "--group-by", "none")  # fmt: skip
    assert by_tag.returncode == EXIT_OK, by_tag.stderr
    assert sorted(str(b["name"]) for b in list_json(store)) == ["etc-1", "www-1"]
    for name, source in (("etc-1", etc), ("www-1", www)):
        restored = cli("restore", store, name, tmp_path / "out" / name)
        assert restored.returncode == EXIT_OK, restored.stderr
        assert_same_tree(source, tmp_path / "out" / name)


def test_bad_retention_options_are_usage_errors(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert cli("backup", write_source(tmp_path / "s", "s"), store).returncode == EXIT_OK
    bad_tag = cli("backup", tmp_path / "s", store, "--tag", "a,b")
    assert bad_tag.returncode == EXIT_USAGE
    assert "invalid tag 'a,b'" in bad_tag.stderr
    group = cli("prune", store, "--keep-last", "1", "--group-by", "path")
    assert group.returncode == EXIT_USAGE and "invalid choice: 'path'" in group.stderr
    within = cli("prune", store, "--keep-within", "soon")
    assert within.returncode == EXIT_USAGE and "invalid duration 'soon'" in within.stderr
    nothing = cli("prune", store, "--host", "db")
    assert nothing.returncode == EXIT_USAGE
    assert "--keep-monthly, --keep-yearly or --keep-within above 0" in nothing.stderr
    assert [b["name"] for b in list_json(store)] != []


def test_a_backup_without_tags_writes_no_tags_field(tmp_path: Path) -> None:
    """``tags`` is optional when read: a MANIFEST without it (any older one) has no tags."""

    async def go() -> tuple[tuple[str, ...], bytes]:
        async with open_storage(str(tmp_path / "store")) as store:
            source = write_source(tmp_path / "s", "s")
            await BackupEngine(store, fast_config()).backup(source, name="plain")
            manifest = await BackupEngine(store).manifest("plain")
            return manifest.tags, await store.get("backups/plain/MANIFEST")

    tags, stored = asyncio.run(go())
    assert tags == () and b'"tags"' not in stored
