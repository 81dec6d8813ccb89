"""Every option from an ``ASYNCBACKUP_*`` variable, the flag on the command line winning.

The rule is mechanical, so an option added to any command gets its variable with no extra work:

- an option of a shared group (transfer, metrics, global, testing) and the STORE argument read
  ``ASYNCBACKUP_`` and their ``dest`` upper-cased: ``ASYNCBACKUP_MAX_RETRIES``,
  ``ASYNCBACKUP_STORE``, the same for every command;
- a command's own option reads ``ASYNCBACKUP_<COMMAND>_<DEST>``: ``ASYNCBACKUP_BACKUP_EXCLUDE``,
  ``ASYNCBACKUP_PRUNE_KEEP_DAILY``. Scoped, because one name means different things to two
  commands: a backup's excludes set for a nightly job must never leave files out of a restore.

A variable becomes the option's default, so anything given on the command line replaces it; a
value the option would refuse is refused the same way, naming the variable (exit 2).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator, Mapping

PREFIX = "ASYNCBACKUP_"
ENV_POSITIONALS = frozenset({"store"})
"""Positional arguments that may come from the environment. Only STORE: a nightly job sets it
once; SOURCE_DIR, NAME and TARGET_DIR change from one run to the next."""

SHARED_GROUPS = ("transfer options", "metrics options", "global options", "testing options")
"""The option groups several commands share (``arguments.py``): one variable each."""
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_NO_VARIABLE = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def variable(action: argparse.Action, parser: argparse.ArgumentParser) -> str | None:
    """The environment variable of ``action`` of command ``parser``, or None if it has none."""
    if isinstance(action, _NO_VARIABLE) or action.dest == argparse.SUPPRESS:
        return None
    if not action.option_strings:
        return PREFIX + action.dest.upper() if action.dest in ENV_POSITIONALS else None
    shared = any(
        group.title in SHARED_GROUPS and action in group._group_actions
        for group in parser._action_groups
    )
    words = parser.prog.split()
    if shared or len(words) < 2:
        return PREFIX + action.dest.upper()
    return f"{PREFIX}{words[-1]}_{action.dest}".upper().replace("-", "_")


def command_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and the parser of each of its commands."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from dict.fromkeys(action.choices.values())  # aliases: once


def document(parser: argparse.ArgumentParser) -> None:
    """Add each option's variable to its help, where ``--help`` and docs/commands.md show it."""
    for command in command_parsers(parser):
        for action in command._actions:
            name = variable(action, command)
            if name is not None and action.help != argparse.SUPPRESS:
                action.help = f"{action.help or ''} [${name}]".strip()


def apply(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Make each ``ASYNCBACKUP_*`` variable set in ``environ`` its option's default.

    Exits 2 (``parser.error``) on a value the option refuses.
    """
    for command in command_parsers(parser):
        for action in command._actions:
            name = variable(action, command)
            if name is None or name not in environ:
                continue
            try:
                value = _convert(action, environ[name])
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                command.error(f"{name}={environ[name]!r}: {exc}")
            if not action.option_strings:  # a positional: now optional
                action.nargs = argparse.OPTIONAL
                action.required = False
            action.default = value


def _convert(action: argparse.Action, text: str) -> object:
    if isinstance(action, argparse._StoreConstAction):  # store_true, store_false, store_const
        return action.const if _boolean(text) else action.default
    if isinstance(action, argparse._CountAction):
        return int(text)
    if isinstance(action, argparse._AppendAction | argparse._ExtendAction):
        return [_one(action, word) for word in shlex.split(text)]
    return _one(action, text)


def _one(action: argparse.Action, text: str) -> object:
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"choose from {', '.join(map(str, action.choices))}")
    return value


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("use 1, true, yes or on; or 0, false, no or off")
