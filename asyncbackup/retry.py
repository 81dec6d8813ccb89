"""The retry layer: the only place store calls are retried, limited and timed.

Each store call is one unit of retry. An attempt runs inside a transfer slot (a semaphore of
``concurrency``) and under its own timeout; a transient failure releases the slot, sleeps with full
jitter, and tries again, so a retrying transfer never holds a slot another one could use. Permanent
errors are never retried. A budget shared by the whole job bounds the retries when the store is
down. With a bandwidth limit, each attempt first waits for its bytes' tokens, also outside the
slot and the timeout (see ``bandwidth.py``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import backoff

from asyncbackup.bandwidth import Bandwidth
from asyncbackup.config import RetryPolicy
from asyncbackup.errors import PermanentStorageError, TransientStorageError
from asyncbackup.metrics import Metrics

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger("asyncbackup")

_FIRST_ATTEMPT_SECONDS: ContextVar[float] = ContextVar("first_attempt_seconds", default=0.0)
"""How long the first attempt of the call being retried took: it ran before python-backoff's
loop started, and counts toward ``max_time`` all the same. Per task, so concurrent calls never
see each other's."""


@dataclass(frozen=True)
class Transfer:
    """What one store call is, for log lines and metrics."""

    operation: str  # backup, restore or verify: the metrics label
    action: str  # upload, download, list, commit...
    path: str  # the file, or the key when no file is involved
    chunk: str = ""  # e.g. "chunk 3/9 1a2b3c4d"
    nbytes: int = 0  # what one attempt sends or fetches, paid to the bandwidth limit

    def __str__(self) -> str:
        where = f"{self.path} {self.chunk}" if self.chunk else self.path
        return f"{self.action} {where}"


class RetryBudget:
    """Retries the whole job may still spend: a token bucket in the spirit of botocore's quota.

    It starts full at ``policy.budget``; a retry spends one token; a successful call earns back
    ``policy.budget_refill``, up to the start. A flaky store is retried for as long as calls keep
    succeeding; a store that is down empties it within ``policy.budget`` retries.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.capacity = float(policy.budget)
        self.refill_per_success = policy.budget_refill
        self.tokens = self.capacity
        self.spent = 0
        self.exhausted = False

    def allows_retry(self) -> bool:
        if self.tokens < 1:
            self.exhausted = True
        return not self.exhausted

    def spend(self) -> None:
        self.tokens -= 1
        self.spent += 1

    def explain(self) -> str:
        """A sentence for the final error when the budget ran out, else nothing."""
        if not self.exhausted:
            return ""
        return (
            f"The job's retry budget ({self.capacity:g} retries) ran out: "
            "the store looks down or badly overloaded. "
        )

    def refill(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.refill_per_success)


def _no_waits() -> Generator[float, Any, None]:
    while True:
        yield 0.0


class Retrier:
    """Runs store calls one attempt at a time within the concurrency limit, retried outside it."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        concurrency: int,
        metrics: Metrics,
        sleep: Sleep = asyncio.sleep,
        bandwidth: Bandwidth | None = None,
    ) -> None:
        self.policy = policy
        self.budget = RetryBudget(policy)
        self._slots = asyncio.Semaphore(concurrency)
        self._metrics = metrics
        self._sleep = sleep
        self._bandwidth = bandwidth
        self._answered = False  # has any request of this job succeeded yet?
        self._timeout = policy.attempt_timeout
        self._series: dict[str, tuple[Any, Any]] = {}  # operation -> (inflight, duration) children
        # python-backoff drives the loop (tries, max_time, giveup, handlers). It sleeps with
        # asyncio.sleep, which tests cannot replace, so it is handed zero waits and the jittered
        # sleep happens in _before_retry through the injected ``sleep``.
        self._retrying = backoff.on_exception(
            _no_waits,
            TransientStorageError,
            jitter=None,
            max_tries=policy.max_attempts,
            max_time=self._time_left if policy.max_time is not None else None,
            giveup=self._give_up,
            on_backoff=self._before_retry,
            on_giveup=self._after_last_try,
            logger=None,
        )(self._replay_or_attempt)

    async def run(self, transfer: Transfer, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` until it succeeds, a permanent error occurs, or the retries run out.

        Raises:
            TransientStorageError: the last attempt's error, once the retries are spent.
            PermanentStorageError: at once, never retried; also a connection refused before
                any request of the job succeeded.
        """
        # The first attempt runs bare: nearly every call succeeds at once, and python-backoff's
        # loop costs more than the rest of the retry layer (benchmarks/lean.py). Only a
        # transient failure enters the loop, whose first try replays that failure, so tries,
        # max_time, the budget, the handlers and the log lines are those of one loop from the
        # first attempt on.
        started = time.monotonic()
        try:
            return await self._attempt(transfer, call)
        except TransientStorageError as exc:
            first_failure = exc
        _FIRST_ATTEMPT_SECONDS.set(time.monotonic() - started)
        try:
            return cast(T, await self._retrying(transfer, call, [first_failure]))
        except TransientStorageError as exc:
            if self._answered or not _refused(exc):
                raise
            # Nothing listens there: almost always a wrong address, and ten retries would only
            # hide that for half a minute. Once the store has answered, a refusal is a restart
            # or an overloaded server, and is retried like any transient error.
            raise PermanentStorageError(
                f"{exc}: the connection was refused at the job's first request: wrong address? "
                "Check the store URL, --endpoint-url or $AWS_ENDPOINT_URL, or "
                "$STORAGE_EMULATOR_HOST"
            ) from exc

    async def _replay_or_attempt(
        self, transfer: Transfer, call: Callable[[], Awaitable[T]], replay: list[Exception]
    ) -> T:
        if replay:
            raise replay.pop()
        return await self._attempt(transfer, call)

    def _time_left(self) -> float:
        """``max_time`` for python-backoff's loop: what the first attempt left of it."""
        assert self.policy.max_time is not None
        return self.policy.max_time - _FIRST_ATTEMPT_SECONDS.get()

    def delay_before_retry(self, tries: int) -> float:
        """The sleep after failed attempt ``tries``: full jitter over a capped exponential."""
        doublings = min(tries - 1, 64)  # 2 ** 1024 is past a float: the cap is reached long before
        ceiling = min(self.policy.max_delay, self.policy.base_delay * 2**doublings)
        return backoff.full_jitter(ceiling)

    async def _attempt(self, transfer: Transfer, call: Callable[[], Awaitable[T]]) -> T:
        if self._bandwidth is not None and transfer.nbytes:
            # Before the slot and the timeout: waiting for tokens is neither a transfer nor a hang.
            waited = await self._bandwidth.acquire(transfer.nbytes)
            self._metrics.throttled.labels(transfer.operation).inc(waited)
        series = self._series.get(transfer.operation)
        if series is None:  # labels bound once per operation, not looked up per call
            series = self._series[transfer.operation] = (
                self._metrics.inflight.labels(transfer.operation),
                self._metrics.chunk_duration.labels(transfer.operation),
            )
        inflight, duration = series
        await self._slots.acquire()
        try:
            inflight.inc()
            started = time.monotonic()
            try:
                async with asyncio.Timeout(asyncio.get_running_loop().time() + self._timeout):
                    result = await call()
            except TimeoutError as exc:
                raise TransientStorageError(
                    f"{transfer}: no answer within {self._timeout:g}s"
                ) from exc
            finally:
                inflight.dec()
            duration.observe(time.monotonic() - started)
        finally:
            self._slots.release()
        self._answered = True
        self.budget.refill()
        return result

    def _give_up(self, exc: Exception) -> bool:
        if not self._answered and _refused(exc):
            return True  # see run()
        return not self.budget.allows_retry()

    async def _before_retry(self, details: Any) -> None:
        transfer: Transfer = details["args"][0]
        tries: int = details["tries"]
        delay = self.delay_before_retry(tries)
        if self.policy.max_time is not None:
            elapsed = details["elapsed"] + _FIRST_ATTEMPT_SECONDS.get()
            delay = max(0.0, min(delay, self.policy.max_time - elapsed))
        self.budget.spend()
        self._metrics.retries.labels(transfer.operation).inc()
        log.warning(
            "retry: %s: attempt %d/%d failed: %s; retrying in %.2fs",
            transfer,
            tries,
            self.policy.max_attempts,
            details["exception"],
            delay,
        )
        await self._sleep(delay)

    async def _after_last_try(self, details: Any) -> None:
        transfer: Transfer = details["args"][0]
        why = "retry budget of the job exhausted" if self.budget.exhausted else "no attempts left"
        if not self._answered and _refused(details["exception"]):
            why = "connection refused before the store ever answered"
        log.error(
            "giving up: %s after %d attempt(s) (%s): %s",
            transfer,
            details["tries"],
            why,
            details["exception"],
        )


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a refused TCP connection, however deep the SDK wrapped it
    (aiohttp keeps the OSError in ``os_error``, botocore in ``kwargs["error"]``)."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return True
        kwargs = getattr(current, "kwargs", None)
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        pending += [
            current.__cause__,
            current.__context__,
            getattr(current, "os_error", None),
            inner,
        ]
    return False
