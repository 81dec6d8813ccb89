"""Blocking file-system calls off the event loop, that settle before a cancellation moves on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


async def settled(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``call`` in a worker thread; if the caller is cancelled, wait for the thread first.

    A cancelled ``asyncio.to_thread`` returns at once while its thread runs on, so a call that
    creates, writes or renames files could still change the disk after the job reported, or after
    its clean-up ran. These calls take milliseconds; waiting for them keeps "nothing half-written
    is left" true at the moment a job returns.
    """
    work = asyncio.ensure_future(asyncio.to_thread(call, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what the caller reports
        raise
