"""One contract, three backends: every test here runs against MemoryStore, RedisStore and RedisClusterStore."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from philip.store import (
    MemoryStore,
    RecordNotFound,
    RedisStore,
    Store,
    StoreUnavailable,
    StreamEntry,
    open_store,
)
from philip.store.base import parse_stream_id
from tests.store.conftest import CLOSED_PORT_URL, REDIS_URL, Reopen, payloads

# ---- records -------------------------------------------------------------------------------------


async def test_record_round_trip(store: Store) -> None:
    data = {"prompt": "a cat", "steps": 4, "cfg": 1.2345678901234567, "tags": [], "meta": {"seed": 7}}
    await store.put_record("job", "j1", data)
    got = await store.get_record("job", "j1")
    assert got == data
    assert got is not None
    got["prompt"] = "mutated"  # callers get a copy, never the stored state
    assert await store.get_record("job", "j1") == data
    assert await store.get_record("job", "missing") is None
    assert await store.get_record("other", "j1") is None


async def test_create_record_stores_only_when_absent(store: Store) -> None:
    assert await store.create_record("token", "sks", {"owner": "a"}, ttl_s=60)
    assert not await store.create_record("token", "sks", {"owner": "b"})
    assert await store.get_record("token", "sks") == {"owner": "a"} and "sks" in await store.list_records("token")
    await store.delete_record("token", "sks")
    assert await store.create_record("token", "sks", {"owner": "b"})  # free again once deleted
    assert await store.get_record("token", "sks") == {"owner": "b"}


async def test_update_merges_and_keeps_ttl(store: Store) -> None:
    await store.put_record("job", "j1", {"state": "queued", "n": 1}, ttl_s=0.5)
    merged = await store.update_record("job", "j1", {"state": "running", "progress": 0.5})
    assert merged == {"state": "running", "n": 1, "progress": 0.5}
    assert await store.get_record("job", "j1") == merged
    await asyncio.sleep(0.65)
    assert await store.get_record("job", "j1") is None  # update did not drop the TTL


async def test_update_without_ttl_stays(store: Store) -> None:
    await store.put_record("job", "j1", {"a": 1})
    await store.update_record("job", "j1", {"b": 2})
    assert await store.get_record("job", "j1") == {"a": 1, "b": 2}


async def test_update_missing_raises(store: Store) -> None:
    with pytest.raises(RecordNotFound):
        await store.update_record("job", "nope", {"x": 1})
    await store.put_record("job", "short", {"x": 0}, ttl_s=0.2)
    await asyncio.sleep(0.3)
    with pytest.raises(RecordNotFound):
        await store.update_record("job", "short", {"x": 1})
    assert await store.get_record("job", "short") is None  # the failed update did not resurrect it


async def test_delete(store: Store) -> None:
    await store.put_record("job", "j1", {"a": 1})
    assert await store.delete_record("job", "j1") is True
    assert await store.get_record("job", "j1") is None
    assert await store.delete_record("job", "j1") is False
    assert await store.list_records("job") == []


async def test_list_records(store: Store) -> None:
    await store.put_record("job", "b", {})
    await store.put_record("job", "a", {})
    await store.put_record("job", "soon-gone", {}, ttl_s=0.2)
    await store.put_record("user", "u1", {})
    assert await store.list_records("job") == ["a", "b", "soon-gone"]
    assert await store.list_records("user") == ["u1"]
    assert await store.list_records("empty") == []
    await asyncio.sleep(0.3)
    assert await store.list_records("job") == ["a", "b"]


async def test_reserved_kind_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.put_record("blob", "x", {})
    with pytest.raises(ValueError):
        await store.put_record("a:b", "x", {})


# ---- blobs ---------------------------------------------------------------------------------------


async def test_blob_ttl_expiry(store: Store) -> None:
    data = bytes(range(256)) * 4
    await store.put_blob("img1", data, ttl_s=0.3)
    assert await store.get_blob("img1") == data
    assert await store.get_blob("missing") is None
    await asyncio.sleep(0.4)
    assert await store.get_blob("img1") is None


# ---- event streams -------------------------------------------------------------------------------


async def test_stream_order_and_after(store: Store) -> None:
    ids = [await store.append_event("s", f"e{i}".encode()) for i in range(5)]
    keys = [parse_stream_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 5
    entries = await store.read_events("s")
    assert [e.id for e in entries] == ids
    assert payloads(entries) == [b"e0", b"e1", b"e2", b"e3", b"e4"]
    assert payloads(await store.read_events("s", after=ids[1])) == [b"e2", b"e3", b"e4"]
    assert payloads(await store.read_events("s", after=ids[1], count=2)) == [b"e2", b"e3"]
    assert await store.read_events("s", after=ids[-1]) == []
    assert await store.read_events("nothing-here") == []


async def test_late_subscriber_replays_from_start(store: Store) -> None:
    for i in range(3):
        await store.append_event("job1", f"p{i}".encode())
    await store.close_stream("job1")
    async with asyncio.timeout(5):
        got = [e.payload async for e in store.subscribe("job1")]
    assert got == [b"p0", b"p1", b"p2"]
    # Replaying again (another late subscriber) gives the same result.
    async with asyncio.timeout(5):
        assert [e.payload async for e in store.subscribe("job1")] == got


async def test_subscribe_tails_until_close(store: Store) -> None:
    await store.append_event("job2", b"before")

    async def collect() -> list[bytes]:
        return [e.payload async for e in store.subscribe("job2")]

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.2)
    assert not task.done()
    await store.append_event("job2", b"after1")
    await store.append_event("job2", b"after2")
    await asyncio.sleep(0.1)
    assert not task.done()  # still tailing: not closed yet
    await store.close_stream("job2")
    async with asyncio.timeout(5):
        assert await task == [b"before", b"after1", b"after2"]


async def test_read_events_blocking(store: Store) -> None:
    t0 = time.monotonic()
    assert await store.read_events("blk", block_ms=200) == []
    assert time.monotonic() - t0 >= 0.15

    task = asyncio.create_task(store.read_events("blk", block_ms=3000))
    await asyncio.sleep(0.2)
    assert not task.done()
    t1 = time.monotonic()
    eid = await store.append_event("blk", b"wake")
    async with asyncio.timeout(2):
        got = await task
    assert [(e.id, e.payload) for e in got] == [(eid, b"wake")]
    assert time.monotonic() - t1 < 1.0  # woke on arrival, not at the end of block_ms


async def test_close_marker_is_terminal_in_read_events(store: Store) -> None:
    await store.append_event("c", b"x")
    await store.close_stream("c")
    entries = await store.read_events("c")
    assert [(e.payload, e.terminal) for e in entries] == [(b"x", False), (b"", True)]


async def test_maxlen_trimming_keeps_most_recent(store: Store) -> None:
    sent = [f"m{i}".encode() for i in range(300)]
    for p in sent:
        await store.append_event("trim", p, maxlen=10)
    kept = payloads(await store.read_events("trim", count=1000))
    assert 10 <= len(kept) < 300  # approximate trimming (Redis MAXLEN ~) may keep a few more
    assert kept == sent[-len(kept) :]


async def test_expire_stream(store: Store) -> None:
    assert await store.expire_stream("none", 1.0) is False
    await store.append_event("exp", b"x")
    assert await store.expire_stream("exp", 0.2) is True
    assert len(await store.read_events("exp")) == 1
    await asyncio.sleep(0.3)
    assert await store.read_events("exp") == []


# ---- work queue ----------------------------------------------------------------------------------


async def test_two_consumers_get_distinct_entries(store: Store) -> None:
    # Enqueued before the group exists: still delivered.
    ids = [await store.enqueue("train", f"job{i}".encode()) for i in range(4)]
    a = await store.claim("train", "workers", "c1", count=2)
    b = await store.claim("train", "workers", "c2", count=2)
    assert len(a) == 2 and len(b) == 2
    assert {e.id for e in a}.isdisjoint({e.id for e in b})
    assert sorted([*a, *b], key=lambda e: parse_stream_id(e.id)) == [
        StreamEntry(i, f"job{n}".encode()) for n, i in enumerate(ids)
    ]
    assert await store.claim("train", "workers", "c3") == []
    assert await store.pending_count("train", "workers") == 4
    # Another group sees the whole queue independently.
    assert len(await store.claim("train", "auditors", "x", count=10)) == 4


async def test_ack_removes_from_pending(store: Store) -> None:
    await store.enqueue("q", b"one")
    await store.enqueue("q", b"two")
    assert await store.pending_count("q", "g") == 0
    (first,) = await store.claim("q", "g", "c1")
    assert first.payload == b"one"
    assert await store.pending_count("q", "g") == 1
    assert await store.ack("q", "g", first.id) is True
    assert await store.ack("q", "g", first.id) is False
    assert await store.pending_count("q", "g") == 0
    (second,) = await store.claim("q", "g", "c1")  # acked work is not redelivered
    assert second.payload == b"two"
    assert await store.ack("q", "unknown-group", second.id) is False


async def test_dead_consumer_entry_is_reclaimed(store: Store) -> None:
    await store.enqueue("q", b"work")
    (taken,) = await store.claim("q", "g", "dead")
    assert await store.reclaim("q", "g", "alive", min_idle_ms=300) == []  # not idle long enough yet
    await asyncio.sleep(0.4)
    got = await store.reclaim("q", "g", "alive", min_idle_ms=300)
    assert got == [taken]
    assert await store.pending_count("q", "g") == 1
    assert await store.claim("q", "g", "dead") == []  # no longer the dead consumer's
    assert await store.claim("q", "g", "alive") == [taken]  # now alive's own pending entry
    assert await store.ack("q", "g", taken.id) is True
    assert await store.pending_count("q", "g") == 0


async def test_touch_keeps_a_live_consumers_entry_from_reclaim(store: Store) -> None:
    await store.enqueue("q", b"long job")
    (taken,) = await store.claim("q", "g", "busy")
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await store.touch("q", "g", "busy", taken.id) is True
        assert await store.reclaim("q", "g", "thief", min_idle_ms=300) == []  # heartbeat < idle
    assert await store.touch("q", "g", "thief", taken.id) is False  # not the owner
    await asyncio.sleep(0.35)  # heartbeats stop: the entry goes to another worker
    assert await store.reclaim("q", "g", "thief", min_idle_ms=300) == [taken]
    assert await store.touch("q", "g", "busy", taken.id) is False  # the old owner learns it lost it
    assert await store.ack("q", "g", taken.id) is True
    assert await store.touch("q", "g", "thief", taken.id) is False  # acked: nothing to keep alive
    assert await store.touch("q", "nogroup", "thief", taken.id) is False


async def test_restarted_consumer_resumes_own_pending_first(backend: tuple[Store, Reopen]) -> None:
    store, reopen = backend
    await store.enqueue("q", b"a")
    await store.enqueue("q", b"b")
    (a,) = await store.claim("q", "g", "worker-1")
    assert a.payload == b"a"

    restarted = await reopen()
    assert await restarted.claim("q", "g", "worker-1") == [a]  # its unacked entry, before new work
    await restarted.ack("q", "g", a.id)
    (b,) = await restarted.claim("q", "g", "worker-1")
    assert b.payload == b"b"


async def test_claim_blocks_until_enqueue(store: Store) -> None:
    assert await store.claim("q", "g", "c", block_ms=100) == []
    task = asyncio.create_task(store.claim("q", "g", "c", block_ms=3000))
    await asyncio.sleep(0.2)
    assert not task.done()
    await store.enqueue("q", b"late")
    async with asyncio.timeout(2):
        got = await task
    assert payloads(got) == [b"late"]


# ---- helpers -------------------------------------------------------------------------------------


async def test_incr_and_fixed_window_ttl(store: Store) -> None:
    assert await store.incr("hits") == 1
    assert await store.incr("hits", by=2) == 3
    assert await store.incr("win", ttl_s=0.4) == 1
    await asyncio.sleep(0.25)
    assert await store.incr("win", ttl_s=0.4) == 2  # TTL not extended by later increments
    await asyncio.sleep(0.25)
    assert await store.incr("win", ttl_s=0.4) == 1  # window expired: counter restarted


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


# ---- backend selection and failures --------------------------------------------------------------


async def test_open_store_selects_backend() -> None:
    for url in (None, "", "memory://"):
        assert isinstance(open_store(url), MemoryStore)
    redis_store = open_store(REDIS_URL, prefix="x:")
    assert isinstance(redis_store, RedisStore) and redis_store.prefix == "x:"
    await redis_store.close()
    with pytest.raises(ValueError):
        open_store("ftp://example.com")


async def test_unreachable_redis_raises_store_unavailable() -> None:
    store = RedisStore("redis://:s3cret@127.0.0.1:1/0", socket_timeout=0.5, retries=0)
    t0 = time.monotonic()
    assert await store.ping() is False
    with pytest.raises(StoreUnavailable, match=re.escape("redis://:***@127.0.0.1:1/0")) as info:
        await store.put_record("job", "j1", {"a": 1})
    assert "s3cret" not in str(info.value)
    for call in (
        store.get_blob("b"),
        store.read_events("s", block_ms=100),
        store.claim("q", "g", "c"),
        store.incr("n"),
    ):
        with pytest.raises(StoreUnavailable):
            await call
    assert time.monotonic() - t0 < 5


async def test_open_store_closed_port_fails_fast() -> None:
    store = open_store(CLOSED_PORT_URL, socket_timeout=0.5)
    with pytest.raises(StoreUnavailable, match=re.escape(CLOSED_PORT_URL)):
        await store.get_record("job", "x")
