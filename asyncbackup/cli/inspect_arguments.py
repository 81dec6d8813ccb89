"""The commands that look at a store and change nothing: ``list``, ``show``, ``diff``,
``verify``, each with its own options."""

from __future__ import annotations

import argparse

from asyncbackup.cli.groups import (
    BWLIMIT,
    CONCURRENCY,
    METRICS,
    CommandParser,
    add_command,
    add_name,
    add_store,
)


def add_list(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``list`` and its own options."""
    listing = add_command(
        commands, "list", "list the backups in a store", offers={CONCURRENCY, METRICS},
        description="List the committed backups in STORE, oldest finished first (--host, --source "
        "and --tag keep only the matching ones).",
    )  # fmt: skip
    add_store(listing)
    listing.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    listing.add_argument("--host", help="only the backups made on this host")
    listing.add_argument("--source", metavar="PATH", help="only the backups of this directory")
    listing.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only the backups with this tag (repeat: with every one of them)",
    )
    return listing


def add_show(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``show`` and its own options."""
    showing = add_command(
        commands, "show", "describe one backup",
        description="Describe backup NAME: when, from where, totals, codec; --files lists it.",
    )  # fmt: skip
    add_store(showing)
    add_name(showing, "the backup to describe")
    showing.add_argument("--json", action="store_true", help="with every entry, for scripts")
    showing.add_argument("--files", action="store_true", help="list every entry, like ls -l")
    return showing


def add_diff(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``diff`` and its own options."""
    differ = add_command(
        commands, "diff", "what was added, removed and changed between two backups",
        description="Compare backups A and B of STORE: entries added, removed and changed "
        "(type, size, mode, content by hash, link target).",
    )  # fmt: skip
    add_store(differ)
    add_name(differ, "the older backup", metavar="A", dest="old")
    add_name(differ, "the newer backup", metavar="B", dest="new")
    differ.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    return differ


def add_verify(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``verify`` and its own options."""
    verify = add_command(
        commands, "verify", "check that a backup (or every backup) would restore",
        offers={CONCURRENCY, BWLIMIT, METRICS},
        description="Check that every chunk backup NAME (every backup, without NAME) needs is "
        "in STORE (one listing); with --deep, download each chunk once, check its hash, and "
        "check each file's size and sha256 from its chunks as a restore does. Exit 1 if any "
        "chunk is missing or corrupt, a file would not restore, or a MANIFEST cannot be read.",
    )  # fmt: skip
    add_store(verify)
    verify.add_argument(
        "name", metavar="NAME", nargs="?", help="the backup to check (default: every backup)"
    )
    verify.add_argument(
        "--deep",
        action="store_true",
        help="download every chunk once, re-hash it, and check each file's size and sha256",
    )
    return verify
