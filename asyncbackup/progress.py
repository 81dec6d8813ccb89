"""How a running job reports progress to whoever shows it (the CLI's bar, a service's logs).

A job that knows its totals up front (a restore and ``verify --deep``, from the MANIFEST) tells
a progress object that has an ``expect`` method, which then shows a percentage, a rate and the
time left; a backup learns its size as it walks, so it shows what is done and the rate. Sizes
are in MiB (2**20 bytes) in the bar and the log lines alike.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO, runtime_checkable

if TYPE_CHECKING:
    from tqdm import tqdm

MiB = 2**20


class Progress(Protocol):
    """Told as files and bytes are done. Called on the event loop: it must not block."""

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None: ...


@runtime_checkable
class Expecting(Protocol):
    """A ``Progress`` that can be told the totals of the job before it starts."""

    def expect(self, *, files: int = 0, nbytes: int = 0) -> None: ...


def expect(progress: Progress, *, files: int = 0, nbytes: int = 0) -> None:
    """Tell ``progress`` the job's totals, if it wants them (a plain ``Progress`` does not)."""
    if isinstance(progress, Expecting):
        progress.expect(files=files, nbytes=nbytes)


class NoProgress:
    """Reports nothing: the default for embedded use."""

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


_OPEN_ENDED = "{desc}: {n:.1f} MiB [{elapsed}, {rate_fmt}{postfix}]"
_WITH_TOTAL = (
    "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} MiB "
    "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class BarProgress:
    """A tqdm bar of MiB on a terminal, with the file count beside it; with totals, a
    percentage and the time left."""

    def __init__(self, description: str, *, file: TextIO | None = None) -> None:
        from tqdm import tqdm  # only on a terminal: a job run by cron or a service never pays

        self._files = 0
        self._expected_files = 0
        self._bar: tqdm[None] = tqdm(
            desc=description,
            unit="MiB",
            bar_format=_OPEN_ENDED,
            leave=False,
            file=file if file is not None else sys.stderr,
        )

    def expect(self, *, files: int = 0, nbytes: int = 0) -> None:
        self._expected_files = files
        self._bar.total = nbytes / MiB
        self._bar.bar_format = _WITH_TOTAL
        self._bar.refresh()

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        if files:
            self._files += files
            shown = f"{self._files}/{self._expected_files}" if self._expected_files else self._files
            self._bar.set_postfix(files=shown, refresh=False)
        self._bar.update(nbytes / MiB)

    def close(self) -> None:
        self._bar.close()


class LogProgress:
    """Plain log lines, at most one every ``interval`` seconds: for jobs run without a terminal.
    With totals, each line has the percentage and the time left at the rate so far."""

    def __init__(
        self,
        description: str,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logging.getLogger("asyncbackup")
        self._clock = clock
        self._description = description
        self._interval = interval
        self._started = self._last = clock()
        self._files = self._bytes = 0
        self._expected_files = self._expected_bytes = 0

    def expect(self, *, files: int = 0, nbytes: int = 0) -> None:
        self._expected_files, self._expected_bytes = files, nbytes

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        self._files += files
        self._bytes += nbytes
        now = self._clock()
        if now >= self._last + self._interval:
            self._last = now
            self._log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """What the log says at time ``now``."""
        rate = self._bytes / max(now - self._started, 1e-9)
        files = f"{self._files} files"
        done = f"{self._bytes / MiB:.1f} MiB"
        if not self._expected_bytes:
            return f"{self._description}: {files}, {done} so far ({rate / MiB:.1f} MiB/s)"
        if self._expected_files:
            files = f"{self._files}/{self._expected_files} files"
        share = self._bytes / self._expected_bytes
        left = (self._expected_bytes - self._bytes) / rate if rate > 0 else float("inf")
        return (
            f"{self._description}: {files}, {self._bytes / MiB:.1f} of "
            f"{self._expected_bytes / MiB:.1f} MiB "
            f"({share:.0%}), {rate / MiB:.1f} MiB/s, {_duration(left)} left"
        )

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
