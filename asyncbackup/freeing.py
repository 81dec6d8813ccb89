"""Freeing a large structure a part at a time, the event loop running between the parts.

Dropping the last reference to a list, set or dict of 100,000 objects (a shard record's entries,
a listing of ``chunks/``) frees them all in one C call: tens of milliseconds with the GIL held,
so the event loop waits whichever thread drops it; a worker thread does not help. ``drain``
empties such a structure ``FREES_PER_TURN`` items at a time, with a turn of the loop between
(``benchmarks/commit_stall.py`` measured a commit's last free of 100,000 entries at 30 ms).

A structure is freed a part at a time only if ``drain`` holds the last reference to its items:
the caller drops every other reference first (a frozen tuple is spread into a list that
``drain`` empties, and the tuple then dropped: that only decrements counts).
"""

from __future__ import annotations

import asyncio
from typing import Any

FREES_PER_TURN = 1000
"""Items freed per turn of the loop: an entry and its strings free in well under a microsecond
each, so a turn takes a fraction of a millisecond."""


async def drain(*structures: list[Any] | set[Any] | dict[Any, Any]) -> None:
    """Empty each of ``structures`` (lists, sets, dicts), ``FREES_PER_TURN`` items at a time,
    the loop free between them; each is empty on return."""
    for structure in structures:
        pop = structure.popitem if isinstance(structure, dict) else structure.pop
        while structure:
            for _ in range(min(FREES_PER_TURN, len(structure))):
                pop()
            await asyncio.sleep(0)
