"""How a running job reports progress to whoever shows it (the CLI's bar, a service's logs)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    """Told as files and bytes are done. Called on the event loop: it must not block."""

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None: ...


class NoProgress:
    """Reports nothing: the default for embedded use."""

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        pass


class BarProgress:
    """A tqdm bar of bytes on a terminal, with the file count beside it."""

    def __init__(self, description: str) -> None:
        self._files = 0
        self._bar = tqdm(
            desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False
        )

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        if files:
            self._files += files
            self._bar.set_postfix(files=self._files, refresh=False)
        self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


class LogProgress:
    """Plain log lines, at most one every ``interval`` seconds: for jobs run without a terminal."""

    def __init__(self, description: str, *, interval: float = 10.0) -> None:
        self._log = logging.getLogger("asyncbackup")
        self._clock = time.monotonic
        self._description = description
        self._interval = interval
        self._started = self._next = self._clock()
        self._files = 0
        self._bytes = 0

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        self._files += files
        self._bytes += nbytes
        now = self._clock()
        if now >= self._next + self._interval:
            self._next = now
            rate = self._bytes / max(now - self._started, 1e-9) / 2**20
            self._log.info(
                "%s: %d files, %.1f MiB so far (%.1f MiB/s)",
                self._description,
                self._files,
                self._bytes / 2**20,
                rate,
            )

    def close(self) -> None:
        pass
