"""Shared pieces of the personalizer tests: the shipped model, reference renders, both stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from philip.evals.personalize import reference_images
from philip.images import png_bytes
from philip.store import MemoryStore, RedisStore, Store

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "philip-tiny"
UPSCALER = REPO / "models" / "philip-tiny-x4.onnx"
REDIS_URL = "redis://127.0.0.1:6379/15"


def reference_pngs(n: int = 5) -> list[bytes]:
    return [png_bytes(image) for image in reference_images(n)]


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        async with MemoryStore() as memory:
            yield memory
        return
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    redis_store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0, retries=0)
    if not await redis_store.ping():
        await redis_store.close()
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    try:
        yield redis_store
    finally:
        await redis_store.close()
        await drop_keys(prefix)


async def drop_keys(prefix: str) -> None:
    raw = Redis.from_url(REDIS_URL)
    keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
    if keys:
        await raw.delete(*keys)
    await raw.aclose()
