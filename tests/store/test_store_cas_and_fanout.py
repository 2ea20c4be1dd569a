"""Compare-and-set, TTL refresh and event removal (every backend), and Redis's one-connection fan-out."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from philip.store import RecordNotFound, RedisStore, Store
from tests.store.conftest import REDIS_URL, Reopen, payloads
from tests.store.fanout_support import writes_reach_every_subscriber

# ---- compare-and-set -----------------------------------------------------------------------------


async def test_update_if_changes_only_when_expectations_hold(store: Store) -> None:
    await store.put_record("session", "s1", {"phase": "awaiting", "round": 1}, ttl_s=60)
    assert await store.update_record_if("session", "s1", {"phase": "generating"}, {"phase": ["done"]}) is None
    assert (await store.get_record("session", "s1")) == {"phase": "awaiting", "round": 1}
    merged = await store.update_record_if("session", "s1", {"phase": "generating", "round": 2},
                                          {"phase": ["awaiting", "failed"], "round": [1]})
    assert merged == {"phase": "generating", "round": 2}
    assert await store.update_record_if("session", "s1", {"x": 1}, {"missing": [None]}) is not None
    with pytest.raises(RecordNotFound):
        await store.update_record_if("session", "nope", {"x": 1}, {})


async def test_racing_compare_and_sets_let_exactly_one_win(backend: tuple[Store, Reopen]) -> None:
    store, reopen = backend
    await store.put_record("session", "race", {"phase": "awaiting"})
    others = [await reopen() for _ in range(4)]  # as separate replicas: their own connections
    results = await asyncio.gather(*[
        s.update_record_if("session", "race", {"phase": "generating", "by": k}, {"phase": ["awaiting"]})
        for k, s in enumerate([store, *others] * 4)
    ])
    assert sum(r is not None for r in results) == 1


# ---- TTL refresh and event removal -----------------------------------------------------------------


async def test_refresh_ttl_extends_records_blobs_and_streams(store: Store) -> None:
    await store.put_record("session", "t1", {"a": 1}, ttl_s=0.3)
    await store.put_blob("b1", b"png", ttl_s=0.3)
    await store.append_event("ev:t1", b"e")
    await store.expire_stream("ev:t1", 0.3)
    await store.refresh_ttl(5.0, records=[("session", "t1"), ("session", "absent")], blobs=["b1", "absent"],
                            streams=["ev:t1", "absent"])
    await asyncio.sleep(0.5)
    assert await store.get_record("session", "t1") == {"a": 1}
    assert await store.get_blob("b1") == b"png"
    assert payloads(await store.read_events("ev:t1")) == [b"e"]
    assert await store.get_record("session", "absent") is None  # refreshing creates nothing
    await store.refresh_ttl(0.2, records=[("session", "t1")], blobs=["b1"], streams=["ev:t1"])
    await asyncio.sleep(0.4)
    assert await store.get_record("session", "t1") is None
    assert await store.get_blob("b1") is None
    assert await store.read_events("ev:t1") == []


async def test_delete_events_removes_only_those_and_ids_go_on(store: Store) -> None:
    ids = [await store.append_event("ev:d", f"e{k}".encode()) for k in range(5)]
    assert await store.delete_events("ev:d", [ids[1], ids[3], "9-9"]) == 2
    assert await store.delete_events("ev:d", []) == 0
    assert payloads(await store.read_events("ev:d")) == [b"e0", b"e2", b"e4"]
    assert payloads(await store.read_events("ev:d", after=ids[1])) == [b"e2", b"e4"]  # resuming after a removed id
    later = await store.append_event("ev:d", b"e5")
    assert later > ids[-1]


# ---- fan-out ---------------------------------------------------------------------------------------


async def _clients(prefix: str) -> int:
    raw = Redis.from_url(REDIS_URL)
    try:
        name = f"probe-{prefix}"
        await raw.client_setname(name)
        return len(await raw.client_list())
    finally:
        await raw.aclose()


async def test_many_subscribers_share_one_blocking_connection() -> None:
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0, max_connections=8)
    try:
        if not await store.ping():
            pytest.skip("Redis not reachable")
        before = await _clients(prefix)
        got: dict[int, list[bytes]] = {k: [] for k in range(300)}

        async def follow(k: int) -> None:
            async for entry in store.subscribe(f"ev:{k % 30}"):
                got[k].append(entry.payload)

        tasks = [asyncio.create_task(follow(k)) for k in range(300)]
        await asyncio.sleep(1.0)  # all of them idle in the tail
        assert await _clients(prefix) - before <= 9  # the pool (8 at most) and the fan-out's own connection
        await writes_reach_every_subscriber(store, tasks, got)  # while 300 subscribers wait
    finally:
        await store.close()
        raw = Redis.from_url(REDIS_URL)
        keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


async def test_a_subscriber_that_falls_behind_replays_and_loses_nothing(store: Store) -> None:
    seen: list[bytes] = []
    reading = asyncio.Event()

    async def slow() -> None:
        async for entry in store.subscribe("ev:slow"):
            seen.append(entry.payload)
            reading.set()
            await asyncio.sleep(0.002 if len(seen) > 1 else 0.5)  # stalls while 600 arrive

    task = asyncio.create_task(slow())
    await store.append_event("ev:slow", b"0")
    await asyncio.wait_for(reading.wait(), 5.0)
    for k in range(1, 600):
        await store.append_event("ev:slow", str(k).encode())
    await store.close_stream("ev:slow")
    await asyncio.wait_for(task, 30.0)
    assert seen == [str(k).encode() for k in range(600)]
