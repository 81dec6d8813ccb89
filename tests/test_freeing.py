"""``freeing.drain`` frees a list, set or dict ``FREES_PER_TURN`` items at a time, the event
loop running between: counted by finalizers and a ticker task, not timed."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from asyncbackup.freeing import FREES_PER_TURN, drain


class Item:
    """An object whose free is seen (a weak reference's callback)."""


async def test_each_kind_is_freed_a_part_at_a_time_with_the_loop_free_between() -> None:
    n = 3 * FREES_PER_TURN + 7
    items = [Item() for _ in range(3 * n)]
    freed_at: list[int] = []  # the ticker's count when each item was freed
    ticks = 0
    refs = [weakref.ref(item, lambda _: freed_at.append(ticks)) for item in items]
    as_list: list[Any] = items[:n]
    as_set: set[Any] = set(items[n : 2 * n])
    as_dict: dict[Any, Any] = {i: item for i, item in enumerate(items[2 * n :])}
    del items
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await drain(as_list, as_set, as_dict)
    stop = True
    await task
    assert as_list == [] and as_set == set() and as_dict == {}
    assert len(freed_at) == 3 * n and all(r() is None for r in refs)  # every one freed
    per_tick = {t: freed_at.count(t) for t in set(freed_at)}
    assert max(per_tick.values()) == FREES_PER_TURN  # never more in one turn of the loop
    assert len(per_tick) >= 3 * (n // FREES_PER_TURN)  # in as many turns as that takes
