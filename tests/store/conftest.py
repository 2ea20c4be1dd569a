"""The store backends every contract test runs against: in-process, one Redis server, a Redis Cluster."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from redis.asyncio import Redis

from philip.store import MemoryStore, RedisClusterStore, RedisStore, Store, StreamEntry
from tests.store.redis_cluster import redis_cluster

REDIS_URL = "redis://127.0.0.1:6379/15"
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"

Reopen = Callable[[], Awaitable[Store]]


async def redis_reachable() -> bool:
    probe = RedisStore(REDIS_URL, socket_timeout=1.0, retries=0)
    try:
        return await probe.ping()
    finally:
        await probe.close()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on loopback ports for the whole session (started on first use, stopped at the end)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli not installed: no Redis Cluster to test against")
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


async def _delete_prefix(prefix: str) -> None:
    raw = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
    finally:
        await raw.aclose()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, Reopen]]:
    """A fresh store plus a way to open it again, as a restarted process would."""
    if request.param == "memory":
        mem = MemoryStore()

        async def reopen_memory() -> Store:
            # In-process state only survives within the process, so a "restart" shares the instance.
            return mem

        yield mem, reopen_memory
        await mem.close()
        return

    cluster = request.param == "cluster"
    if cluster:
        url = request.getfixturevalue("redis_cluster_url")
    elif await redis_reachable():
        url = REDIS_URL
    else:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    opened: list[RedisStore] = []

    async def reopen_redis() -> Store:
        s = (RedisClusterStore if cluster else RedisStore)(url, prefix=prefix, socket_timeout=2.0)
        opened.append(s)
        return s

    first = await reopen_redis()
    try:
        yield first, reopen_redis
        # A CROSSSLOT (or any) failure of the fan-out's reads would only show as slower subscribers.
        assert [s._fanout.failed_reads for s in opened] == [0] * len(opened)
    finally:
        for s in opened:
            await s.close()
        if not cluster:  # the cluster is thrown away with its keys at the end of the session
            await _delete_prefix(prefix)


@pytest.fixture
def store(backend: tuple[Store, Reopen]) -> Store:
    return backend[0]


def payloads(entries: list[StreamEntry]) -> list[bytes]:
    return [e.payload for e in entries]
