"""What only a Redis Cluster needs: hash-tagged keys, exact compare-and-set in Lua, one XREAD per tailed stream,
backend selection, and a record index kept without MULTI. The whole store contract also runs against the cluster
(the "cluster" backend of conftest.py)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from philip.store import RedisClusterStore, RedisStore, Store, StoreError, StoreUnavailable, open_store
from philip.store.redis_cluster import node_url
from philip.store.redis_keys import ClusterKeys, Keys
from tests.store.conftest import REDIS_URL, Reopen, redis_reachable
from tests.store.fanout_support import writes_reach_every_subscriber


@pytest.fixture
async def cluster_store(redis_cluster_url: str) -> AsyncIterator[RedisClusterStore]:
    # socket_timeout 4 s: the fan-out blocks 2 s per XREAD, so a live event that came in under 1 s did not wait one out.
    s = RedisClusterStore(redis_cluster_url, prefix=f"philip-test:{uuid.uuid4().hex}:", socket_timeout=4.0,
                          max_connections=8)
    yield s
    await s.close()


# ---- keys --------------------------------------------------------------------------------------------


def test_a_sessions_record_and_stream_share_a_slot_and_sessions_spread() -> None:
    keys = ClusterKeys("philip:")
    assert keys.record("session", "ses_1") == "philip:session:{ses_1}"
    assert keys.stream("session:ses_1") == "philip:stream:session:{ses_1}"
    for kind, stream in (("session", "session:ses_1"), ("job", "job:ses_1"), ("training", "training:ses_1")):
        assert key_slot(keys.record(kind, "ses_1").encode()) == key_slot(keys.stream(stream).encode())
    assert key_slot(keys.record("x", "a}b").encode()) == key_slot(keys.stream("s:a}b").encode())  # odd ids too
    assert len({key_slot(keys.record("session", f"ses_{k}").encode()) for k in range(20)}) == 20


def test_a_single_server_keeps_its_key_names() -> None:
    keys = Keys("philip:")
    assert [keys.record("job", "j1"), keys.stream("session:s1"), keys.stream("plain"), keys.queue("train"),
            keys.index("job"), keys.blob("b"), keys.counter("c"), keys.lease("l")] == [
        "philip:job:j1", "philip:stream:session:s1", "philip:stream:plain", "philip:queue:train",
        "philip:idx:job", "philip:blob:b", "philip:counter:c", "philip:lease:l"]


async def test_the_cluster_agrees_on_the_slots(cluster_store: RedisClusterStore) -> None:
    raw = RedisCluster.from_url(node_url(cluster_store.url))
    try:
        keys = cluster_store._keys
        for key in (keys.record("session", "ses_9"), keys.stream("session:ses_9"), keys.queue("train")):
            assert await raw.cluster_keyslot(key) == key_slot(key.encode())
    finally:
        await raw.aclose()


# ---- compare-and-set ---------------------------------------------------------------------------------


async def test_compare_and_set_in_lua_keeps_json_exact(cluster_store: RedisClusterStore) -> None:
    data = {"cfg": 1.2345678901234567, "tags": [], "meta": {}, "big": 2**62 + 1, "name": "caf\u00e9 \u732b"}
    await cluster_store.put_record("session", "exact", data, ttl_s=60)
    merged = await cluster_store.update_record("session", "exact", {"more": [[], {}], "f": 0.1})
    assert merged == {**data, "more": [[], {}], "f": 0.1}
    assert await cluster_store.get_record("session", "exact") == merged
    assert await cluster_store.update_record_if("session", "exact", {"f": 2}, {"f": [0.2]}) is None


async def test_an_expired_record_is_not_resurrected_by_compare_and_set(cluster_store: RedisClusterStore) -> None:
    await cluster_store.put_record("session", "brief", {"phase": "a"}, ttl_s=0.2)
    await asyncio.sleep(0.3)
    with pytest.raises(KeyError):
        await cluster_store.update_record("session", "brief", {"phase": "b"})
    assert await cluster_store.get_record("session", "brief") is None


# ---- fan-out -----------------------------------------------------------------------------------------


async def _clients_and_getkeys(url: str) -> tuple[int, int]:
    """Connections to all nodes, and COMMAND GETKEYS calls they served so far."""
    raw = RedisCluster.from_url(node_url(url))
    try:
        await raw.initialize()
        clients = getkeys = 0
        for node in raw.get_primaries():
            clients += len(await raw.client_list(target_nodes=node))
            stats = await raw.info("commandstats", target_nodes=node)
            getkeys += stats.get("cmdstat_command|getkeys", {}).get("calls", 0)
        return clients, getkeys
    finally:
        await raw.aclose()


async def test_many_subscribers_share_one_xread_per_stream(cluster_store: RedisClusterStore) -> None:
    store = cluster_store
    got: dict[int, list[bytes]] = {k: [] for k in range(300)}

    async def follow(k: int) -> None:
        async for entry in store.subscribe(f"ev:{k % 30}"):
            got[k].append(entry.payload)

    clients, getkeys = await _clients_and_getkeys(store.url)
    tasks = [asyncio.create_task(follow(k)) for k in range(300)]
    await asyncio.sleep(1.0)  # all of them idle in the tail
    assert store._fanout.tailed == 30
    clients_now, getkeys_now = await _clients_and_getkeys(store.url)
    # One per tailed stream, the pool (8 a node at most) and a few the two clients used to discover the cluster:
    # nowhere near one per subscriber.
    assert clients_now - clients <= 30 + 3 * 8 + 6
    assert getkeys_now == getkeys  # XREADs find their slot without asking a server first
    await writes_reach_every_subscriber(store, tasks, got)  # while 300 subscribers wait
    assert store._fanout.failed_reads == 0


async def _first_live_event_after(store: RedisClusterStore, stream: str) -> float:
    got = asyncio.Event()

    async def follow() -> None:
        async for _ in store.subscribe(stream):
            got.set()
            return

    task = asyncio.create_task(follow())
    tailed = store._fanout.tailed
    while store._fanout.tailed == tailed:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # its XREAD is blocked now
    t0 = time.monotonic()
    await store.append_event(stream, b"live")
    await asyncio.wait_for(got.wait(), 5.0)
    await task
    return time.monotonic() - t0


async def test_a_new_tail_gets_its_first_event_at_once(cluster_store: RedisClusterStore) -> None:
    # While another stream's XREAD blocks (2 s), a stream tailed later still hears of its first event at once.
    assert await _first_live_event_after(cluster_store, "ev:first") < 1.0
    assert await _first_live_event_after(cluster_store, "ev:second") < 1.0


async def test_a_tail_nobody_reads_goes_after_one_block(cluster_store: RedisClusterStore) -> None:
    async def follow() -> None:
        async for _ in cluster_store.subscribe("ev:brief"):
            pass

    task = asyncio.create_task(follow())
    while cluster_store._fanout.tailed == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    again = asyncio.create_task(follow())  # joins the tail that is still blocked: no second XREAD
    await asyncio.sleep(0.1)
    assert len(cluster_store._fanout._tasks) == 1
    again.cancel()
    with pytest.raises(asyncio.CancelledError):
        await again
    await asyncio.sleep(2.5)  # the 2 s XREAD returns and finds nobody
    assert cluster_store._fanout.tailed == 0 and not cluster_store._fanout._tasks


# ---- selection and failures --------------------------------------------------------------------------


async def test_open_store_selects_the_cluster_backend() -> None:
    for url, cluster in (("redis+cluster://127.0.0.1:1", False), ("rediss+cluster://h:1", False),
                         ("redis://127.0.0.1:1/0", True)):
        s = open_store(url, cluster=cluster)
        assert isinstance(s, RedisClusterStore)
        await s.close()
    plain = open_store("redis://127.0.0.1:1/0")
    assert type(plain) is RedisStore
    await plain.close()
    with pytest.raises(ValueError):
        open_store("unix:///tmp/redis.sock", cluster=True)
    with pytest.raises(StoreError, match="db"):
        RedisClusterStore("redis+cluster://127.0.0.1:1/2")  # a cluster has database 0 only


async def test_an_unreachable_cluster_is_unavailable() -> None:
    store = RedisClusterStore("redis+cluster://:s3cret@127.0.0.1:1", socket_timeout=0.5, retries=0)
    t0 = time.monotonic()
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable, match=re.escape("redis+cluster://:***@127.0.0.1:1")) as info:
            await store.put_record("job", "j1", {"a": 1})
        assert "s3cret" not in str(info.value)
        for call in (store.read_events("s", block_ms=100), store.claim("q", "g", "c"), store.incr("n")):
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await store.close()
    assert time.monotonic() - t0 < 5


async def test_cluster_mode_against_a_single_server_says_so() -> None:
    if not await redis_reachable():
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    store = RedisClusterStore(REDIS_URL.replace("redis://", "redis+cluster://").rsplit("/", 1)[0], retries=0)
    try:
        with pytest.raises(StoreError, match=r"(?i)cluster mode is not enabled"):
            await store.get_record("job", "j1")
    finally:
        await store.close()


# ---- the record index without MULTI ------------------------------------------------------------------


async def test_a_record_put_while_list_records_prunes_stays_listed(backend: tuple[Store, Reopen]) -> None:
    store = backend[0]
    if not isinstance(store, RedisStore):
        pytest.skip("the index is Redis's")
    await store.put_record("adapter", "x", {"v": 1}, ttl_s=0.05)
    await asyncio.sleep(0.1)  # expired: its id is stale in the index
    exist = store._exist
    calls = 0

    async def put_between(kind: str, ids: Sequence[str]) -> list[bool]:
        nonlocal calls
        found = await exist(kind, ids)
        calls += 1
        if calls == 1:  # another replica puts it again after our EXISTS, before our SREM
            await store.put_record("adapter", "x", {"v": 2})
        return found

    store._exist = put_between  # type: ignore[method-assign]
    assert await store.list_records("adapter") == ["x"]
    store._exist = exist  # type: ignore[method-assign]
    assert await store.list_records("adapter") == ["x"]  # still indexed
