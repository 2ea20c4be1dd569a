"""What the fan-out tests of both Redis backends check once their subscribers idle in the tail."""

from __future__ import annotations

import asyncio

from philip.store import Store


async def writes_reach_every_subscriber(store: Store, tasks: list[asyncio.Task[None]], got: dict[int, list[bytes]],
                                        streams: int = 30) -> None:
    """A write to each stream still goes through while the subscribers wait, and each of them gets it once."""
    for n in range(streams):
        await asyncio.wait_for(store.append_event(f"ev:{n}", b"hello"), 2.0)
    for n in range(streams):
        await store.close_stream(f"ev:{n}")
    await asyncio.wait_for(asyncio.gather(*tasks), 10.0)
    assert all(v == [b"hello"] for v in got.values())
