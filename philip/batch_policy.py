"""The batching policy both model queues share (the generator's jobs, the refiner's rounds).

The oldest waiting item always leads the next batch, so nothing starves; it takes the later items whose key
equals its own, in order, while they fit in ``max_batch`` images (the leader goes even alone above it). A batch
leaves ``window_s`` after its leader arrived, or at once when full, which lets near-simultaneous requests meet
without delaying those that already waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def compatible(pending: Sequence[T], key: Callable[[T], Hashable], size: Callable[[T], int],
               max_batch: int) -> list[T]:
    """The batch the oldest item would lead now."""
    leader = pending[0]
    batch, images = [leader], size(leader)
    for item in pending[1:]:
        if key(item) == key(leader) and images + size(item) <= max_batch:
            batch.append(item)
            images += size(item)
    return batch


async def next_batch(pending: list[T], changed: asyncio.Event, *, key: Callable[[T], Hashable],
                     size: Callable[[T], int], arrived: Callable[[T], float], max_batch: int,
                     window_s: float) -> list[T]:
    """Wait until the oldest item's batch should leave (its window passed, or full); ``changed`` is set by
    whoever adds or removes items."""
    while True:
        while not pending:
            changed.clear()
            await changed.wait()
        batch = compatible(pending, key, size, max_batch)
        wait_s = arrived(pending[0]) + window_s - time.monotonic()
        if wait_s <= 0 or sum(size(item) for item in batch) >= max_batch:
            return batch
        changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), wait_s)
