"""``--bwlimit``: a token bucket shared by every transfer of a job, so the job's average rate to
(or from) the store stays under a cap.

The retry layer asks the bucket for a transfer's bytes before each attempt, *before* it takes a
concurrency slot and outside the attempt's timeout (``retry.Retrier``). Waiting there rather than
in a store wrapper matters twice: a transfer that only waits for tokens holds no slot another one
could use for a request already paid for, and a long wait for tokens is never mistaken for a hung
request by the per-attempt timeout (16 chunks of 8 MiB at 1 MiB/s queue for two minutes). Every
attempt pays again, so retried bytes count against the cap as they do on the wire.

A request is paid for whole before it is sent, then goes out as fast as the link allows: the cap
is on the average rate, over about a chunk's worth of bytes. Smaller chunks make a smoother line.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from asyncbackup.errors import ConfigError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_BURST_SECONDS = 0.25
_RATE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMG]?)(?:i?B)?(?:/s)?", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """'10M', '10MiB/s', '512K', '1.5G' or '65536' as bytes per second (units are powers of 1024).

    Raises:
        ConfigError: the text is not a rate, or the rate is not positive.
    """
    match = _RATE.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"invalid rate {text!r}: use bytes per second, e.g. 65536, 512K or 10M")
    unit = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    rate = float(match.group(1)) * unit
    if rate < 1:
        raise ConfigError(f"invalid rate {text!r}: it must be at least 1 byte per second")
    return rate


class Bandwidth:
    """A token bucket of ``rate`` bytes per second that holds at most ``burst`` bytes (a quarter
    second's worth by default) and starts full.

    ``acquire(n)`` takes ``n`` tokens at once, even past empty, and then waits until the debt is
    paid back: callers are served in the order they asked, a request larger than the bucket waits
    ``n / rate`` seconds minus what was saved, and over any interval of ``t`` seconds at most
    ``burst + rate * t`` bytes are let through. ``clock`` and ``sleep`` are injectable, so tests
    of the arithmetic take no time. Use it from one event loop.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"a bandwidth limit must be positive, not {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else rate * DEFAULT_BURST_SECONDS
        if self.burst < 0:
            raise ConfigError(f"a bandwidth burst must not be negative, not {burst}")
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()
        self.granted = 0
        """Bytes let through so far, retried ones included."""
        self.waited = 0.0
        """Seconds spent waiting for tokens, summed over every caller."""

    async def acquire(self, nbytes: int) -> float:
        """Wait until ``nbytes`` may go: at once while the bucket holds them, else until the
        rate has paid for them. Returns the seconds waited. A cancelled wait gives its tokens
        back."""
        if nbytes <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= nbytes  # reserved now, so later callers queue behind this one
        wait = -self._tokens / self.rate
        if wait > 0:
            try:
                await self._sleep(wait)
            except BaseException:
                self._tokens += nbytes
                raise
            self.waited += wait
        self.granted += nbytes
        return max(wait, 0.0)
