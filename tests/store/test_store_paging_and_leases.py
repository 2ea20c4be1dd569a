"""The store's newest-first paging, retention by age and leases (quotas), on every backend."""

from __future__ import annotations

import asyncio
import time

from philip.store import Store
from tests.store.conftest import payloads

# ---- paging back through a log and trimming it by age --------------------------------------------


async def test_read_events_before_pages_newest_first(store: Store) -> None:
    sent = [f"a{i}".encode() for i in range(7)]
    for p in sent:
        await store.append_event("log", p)
    await store.close_stream("log")  # the marker is never part of a page
    first = await store.read_events_before("log", count=3)
    assert payloads(first) == sent[::-1][:3]
    second = await store.read_events_before("log", before=first[-1].id, count=3)
    assert payloads(second) == sent[::-1][3:6]
    last = await store.read_events_before("log", before=second[-1].id, count=3)
    assert payloads(last) == sent[:1]
    assert await store.read_events_before("log", before=last[-1].id) == []
    assert await store.read_events_before("missing") == []


async def test_trim_events_before_drops_older_entries_only(store: Store) -> None:
    await store.append_event("aged", b"old")
    await asyncio.sleep(0.02)
    cut = int(time.time() * 1000)
    await asyncio.sleep(0.02)
    await store.append_event("aged", b"new")
    assert await store.trim_events_before("aged", cut) == 1
    assert payloads(await store.read_events("aged")) == [b"new"]
    assert await store.trim_events_before("missing", cut) == 0


# ---- leases --------------------------------------------------------------------------------------


async def test_leases_hold_a_limited_number_of_slots(store: Store) -> None:
    assert await store.acquire_lease("q", "a", limit=2, ttl_s=5)
    assert await store.acquire_lease("q", "b", limit=2, ttl_s=5)
    assert not await store.acquire_lease("q", "c", limit=2, ttl_s=5)  # full: nothing changes
    assert await store.count_leases("q") == 2
    assert await store.acquire_lease("q", "a", limit=2, ttl_s=5)  # a holder renews even at the limit
    assert await store.release_lease("q", "a") is True
    assert await store.release_lease("q", "a") is False
    assert await store.acquire_lease("q", "c", limit=2, ttl_s=5)
    assert await store.count_leases("other") == 0


async def test_leases_expire(store: Store) -> None:
    assert await store.acquire_lease("exp", "a", limit=1, ttl_s=0.2)
    assert not await store.acquire_lease("exp", "b", limit=1, ttl_s=0.2)
    await asyncio.sleep(0.3)
    assert await store.count_leases("exp") == 0
    assert await store.acquire_lease("exp", "b", limit=1, ttl_s=0.2)  # the crashed holder's slot is free


async def test_concurrent_acquires_never_exceed_the_limit(store: Store) -> None:
    granted = await asyncio.gather(*(store.acquire_lease("race", f"h{i}", limit=3, ttl_s=5) for i in range(20)))
    assert sum(granted) == 3
    assert await store.count_leases("race") == 3
