"""The two store backends every contract test runs against."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from philip.store import MemoryStore, RedisStore, Store, StreamEntry

REDIS_URL = "redis://127.0.0.1:6379/15"
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"

Reopen = Callable[[], Awaitable[Store]]


async def _redis_reachable() -> bool:
    probe = RedisStore(REDIS_URL, socket_timeout=1.0, retries=0)
    try:
        return await probe.ping()
    finally:
        await probe.close()


@pytest.fixture(params=["memory", "redis"])
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

    if not await _redis_reachable():
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    opened: list[RedisStore] = []

    async def reopen_redis() -> Store:
        s = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0)
        opened.append(s)
        return s

    first = await reopen_redis()
    try:
        yield first, reopen_redis
    finally:
        for s in opened:
            await s.close()
        raw = Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
            if keys:
                await raw.delete(*keys)
        finally:
            await raw.aclose()


@pytest.fixture
def store(backend: tuple[Store, Reopen]) -> Store:
    return backend[0]


def payloads(entries: list[StreamEntry]) -> list[bytes]:
    return [e.payload for e in entries]


