"""What a backup leaves out of its source: gitignore patterns, cache directories, directories
marked by a file, other file systems, and the store itself when it lies inside the source.

The walk asks ``Excluder.decide`` about each entry, in its worker thread, before it yields the
entry or descends into it: an excluded directory is never listed, so an unreadable one or one of
a million files below it costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from asyncbackup.errors import ConfigError
from asyncbackup.manifest import ExcludeRecord
from asyncbackup.patterns import Patterns

log = logging.getLogger("asyncbackup")
CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
"""The first bytes of a valid CACHEDIR.TAG (https://bford.info/cachedir/)."""
Decision = Literal["keep", "exclude", "keep-empty"]
"""keep-empty: record the directory itself, not what it holds (a mount point with
--one-file-system, as tar does)."""
Probe = Callable[[str, int], bytes | None]
"""Reads up to n bytes of the file ``name`` inside a directory; None if there is no such file."""


@dataclass(frozen=True, kw_only=True)
class ExcludeOptions:
    """The exclusions a backup was asked for (the command line's options, or the library's)."""

    patterns: tuple[str, ...] = ()
    exclude_caches: bool = False
    exclude_if_present: tuple[str, ...] = ()
    one_file_system: bool = False

    def __post_init__(self) -> None:
        Patterns(self.patterns, what="--exclude pattern")  # refused now, not mid-walk
        for name in self.exclude_if_present:
            if not name or "/" in name or name in (".", ".."):
                raise ConfigError(f"--exclude-if-present takes a file name, not {name!r}")


class Excluder:
    """Decides, for each entry the walk finds, whether the backup takes it."""

    def __init__(
        self,
        options: ExcludeOptions,
        *,
        root_device: int,
        store_relative: str = "",
        store_dir: tuple[int, int] | None = None,
    ) -> None:
        self.options = options
        self.patterns = Patterns(options.patterns, what="--exclude pattern")
        self.root_device = root_device
        # A local store inside the source: by its path below the source, and by its identity
        # (st_dev, st_ino), which also finds it through a bind mount or a linked parent.
        self.store_relative = store_relative
        self.store_dir = store_dir
        self.store_path = ""  # set if the store was found inside the source

    def decide(self, path: str, kind: str, st: os.stat_result, probe: Probe) -> Decision:
        """Keep, exclude, or keep a directory without its contents. ``probe`` looks inside the
        entry when it is a directory."""
        is_dir = kind == "dir"
        if is_dir and (path == self.store_relative or self.store_dir == (st.st_dev, st.st_ino)):
            log.info("excluding %s: it is the store this backup writes to", path)
            self.store_path = path
            return "exclude"
        if self.patterns and self.patterns.match(path, is_dir=is_dir):
            log.debug("excluding %s: it matches an --exclude pattern", path)
            return "exclude"
        if not is_dir:
            return "keep"
        if self.options.exclude_caches:
            head = probe(CACHEDIR_TAG, len(CACHEDIR_SIGNATURE))
            if head == CACHEDIR_SIGNATURE:
                log.debug("excluding %s: it holds a valid %s", path, CACHEDIR_TAG)
                return "exclude"
        for name in self.options.exclude_if_present:
            if probe(name, 0) is not None:
                log.debug("excluding %s: it holds %s", path, name)
                return "exclude"
        if self.options.one_file_system and st.st_dev != self.root_device:
            log.info("not descending into %s: another file system (--one-file-system)", path)
            return "keep-empty"
        return "keep"

    def record(self) -> ExcludeRecord | None:
        """What the MANIFEST keeps of the exclusions, or None when there were none."""
        o = self.options
        asked = o.patterns or o.exclude_caches or o.exclude_if_present or o.one_file_system
        if not asked and not self.store_path:
            return None
        return ExcludeRecord(
            patterns=self.patterns.lines,  # without blank lines and comments
            exclude_caches=o.exclude_caches,
            exclude_if_present=o.exclude_if_present,
            one_file_system=o.one_file_system,
            store=self.store_path,
        )


def probe_path(parent: Path, name: str) -> Probe:
    """A ``Probe`` inside the directory ``parent / name``, never following a link in its place
    (the path is only joined if the probe is used: most entries are not directories)."""

    def probe(inside: str, size: int) -> bytes | None:
        path = os.path.join(parent, name, inside)
        if size == 0:  # is it there at all (of any type, as restic's --exclude-if-present)
            return b"" if os.path.lexists(path) else None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None  # absent, or a link, or unreadable: not a marker we can trust
        try:
            return os.read(fd, size) if size else b""
        except OSError:
            return None
        finally:
            os.close(fd)

    return probe


def excluder_for(source: Path, store_url: str, options: ExcludeOptions) -> Excluder:
    """The ``Excluder`` of a backup of ``source`` into the store at ``store_url`` (blocking: it
    stats both; call it in a worker thread)."""
    store_relative, store_dir = "", None
    if store_url.startswith("file://"):
        store = Path(url2pathname(urlparse(store_url).path))
        with contextlib.suppress(OSError):
            st = os.stat(store)
            store_dir = (st.st_dev, st.st_ino)
        with contextlib.suppress(ValueError, OSError):  # not inside the source: nothing to do
            relative = store.resolve().relative_to(source.resolve())
            store_relative = relative.as_posix() if relative.parts else "."
    if store_relative == ".":
        raise ConfigError(
            f"the store {store_url} is the source directory {source} itself: "
            "back up into another directory"
        )
    root_device = os.stat(source).st_dev
    return Excluder(
        options, root_device=root_device, store_relative=store_relative, store_dir=store_dir
    )
