"""How a running job reports progress to whoever shows it (the CLI's bar, a service's logs)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    """Told which phase a job is in (reading the parent, listing the store, reading and
    uploading, committing...), with a detail that changes within it (chunks listed so far),
    and as files and bytes are done. Called on the event loop: it must not block."""

    def phase(self, name: str, detail: str = "") -> None: ...

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None: ...


class NoProgress:
    """Reports nothing: the default for embedded use."""

    def phase(self, name: str, detail: str = "") -> None:
        pass

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        pass


class BarProgress:
    """A tqdm bar of bytes on a terminal, with the file count beside it."""

    def __init__(self, description: str) -> None:
        self._files = 0
        self._description = description
        self._bar = tqdm(
            desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False
        )

    def phase(self, name: str, detail: str = "") -> None:
        text = f"{self._description}: {name}" + (f" ({detail})" if detail else "")
        self._bar.set_description_str(text)  # redraws: a long listing shows it is alive

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
        self._phase = ""

    def phase(self, name: str, detail: str = "") -> None:
        """A line when a phase begins, then at most one every ``interval`` with its detail."""
        now = self._clock()
        if name == self._phase and now < self._next + self._interval:
            return
        self._phase, self._next = name, now
        suffix = f" ({detail})" if detail else ""
        self._log.info("%s: %s%s", self._description, name, suffix)

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
