"""Blocking calls off the event loop, on the engine's own thread pool; and calls that settle
before a cancellation moves on.

The engine never uses the loop's default executor: a service that embeds it keeps its own
``asyncio.to_thread`` calls free of our file work. Each public method of ``BackupEngine`` runs
``using(pool)``, and ``to_thread`` here finds that pool through a context variable, which every
task the job spawns inherits, down to the stores' own thread calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
_EXECUTOR: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "asyncbackup_executor", default=None
)


@contextmanager
def using(executor: Executor) -> Iterator[None]:
    """Run the ``to_thread`` calls of this context, and of the tasks it starts, on
    ``executor``."""
    token = _EXECUTOR.set(executor)
    try:
        yield
    finally:
        _EXECUTOR.reset(token)


async def to_thread(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``asyncio.to_thread`` on the pool ``using`` chose (the loop's default outside one)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    work = functools.partial(context.run, call, *args, **kwargs)
    return await loop.run_in_executor(_EXECUTOR.get(), work)


async def in_trips(
    work: Callable[[Sequence[T]], bool], items: Sequence[T], *, per_trip: int
) -> bool:
    """``work`` on ``items``, ``per_trip`` of them per worker-thread trip, the loop free between
    trips: one thread call over 100,000 items would hold the GIL, hence the loop, for as long
    as the machine is slow to hand it back (see ``manifest_reader``). The trips run one after
    another, in order, so ``work`` may keep state across them; it returns True to stop early.
    True if it stopped early."""
    for start in range(0, len(items), per_trip):
        if await to_thread(work, items[start : start + per_trip]):
            return True
    return False


async def settled(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``call`` in a worker thread; if the caller is cancelled, wait for the thread first.

    A cancelled ``asyncio.to_thread`` returns at once while its thread runs on, so a call that
    creates, writes or renames files could still change the disk after the job reported, or after
    its clean-up ran. These calls take milliseconds; waiting for them keeps "nothing half-written
    is left" true at the moment a job returns.
    """
    work = asyncio.ensure_future(to_thread(call, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what the caller reports
        raise
