"""The gRPC session tests' deployment (test_grpc_sessions.py, test_grpc_exploration.py): one ``serve("all")``
per module. Modules with a deployment of their own (keys, quotas) define a ``deployment`` fixture that wins."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from philip.settings import Settings
from philip.store import RedisStore
from services.app import serve
from tests.gateway.grpc_sessions_support import MODEL, REDIS_URL, UPSCALER, Deployment


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment() -> AsyncIterator[Deployment]:
    probe = RedisStore(REDIS_URL, socket_timeout=1.0, retries=0)
    reachable = await probe.ping()
    await probe.close()
    if not reachable:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0)
    settings = Settings(model_dir=str(MODEL), upscaler_path=str(UPSCALER), port=0, http_port=0, max_queue=4,
                        max_batch=8, batch_window_ms=5, blob_ttl_s=300, grace_s=1.0, threads=1)
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("all", settings, store=store, stop=stop, on_ready=ready.set_result))
    deployment = Deployment(await asyncio.wait_for(asyncio.shield(ready), 120))
    try:
        yield deployment
    finally:
        await deployment.channel.close()
        await deployment.refiner_channel.close()
        stop.set()
        await asyncio.wait_for(task, 30)
        await store.close()
        raw = Redis.from_url(REDIS_URL)
        keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()
