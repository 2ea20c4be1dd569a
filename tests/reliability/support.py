"""Deployments on a real Redis for the reliability tests: ``serve("all")``, optionally a second gateway
replica on the same Redis (its own store client, as another pod would have), with settings overridden."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio
from redis.asyncio import Redis

from philip.settings import Settings
from philip.store import RedisStore
from philip.v1 import gateway_pb2_grpc
from services.app import serve
from tests.personalizer.conftest import MODEL, UPSCALER

REDIS_URL = "redis://127.0.0.1:6379/15"


async def _reachable() -> None:
    probe = RedisStore(REDIS_URL, socket_timeout=1.0, retries=0)
    ok = await probe.ping()
    await probe.close()
    if not ok:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")


@contextlib.asynccontextmanager
async def _served(role: str, prefix: str, settings: Settings) -> AsyncIterator[dict[str, str]]:
    store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0,
                       max_connections=settings.store.redis_max_connections)
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(role, settings, store=store, stop=stop, on_ready=ready.set_result))
    try:
        yield await asyncio.wait_for(asyncio.shield(ready), 120)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await store.close()


@contextlib.asynccontextmanager
async def deployment(*, replicas: int = 1, **overrides: Any) -> AsyncIterator[list[dict[str, str]]]:
    """Addresses of each gateway replica (the first also runs generator, refiner and personalizer)."""
    await _reachable()
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    base: dict[str, Any] = dict(model_dir=str(MODEL), upscaler_path=str(UPSCALER), port=0, http_port=0,
                                max_queue=8, max_batch=8, batch_window_ms=5, grace_s=0.5, threads=1)
    settings = Settings(**{**base, **overrides})
    try:
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(_served("all", prefix, settings))
            replicas_up = [first]
            for _ in range(replicas - 1):
                other = settings.with_(generator_addr=first["generator"], refiner_addr=first["refiner"],
                                       personalizer_addr=first.get("personalizer"))
                replicas_up.append(await stack.enter_async_context(_served("gateway", prefix, other)))
            yield replicas_up
    finally:
        raw = Redis.from_url(REDIS_URL)
        keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


def gateway(address: str) -> tuple[aio.Channel, gateway_pb2_grpc.GatewayStub]:
    channel = aio.insecure_channel(address)
    return channel, gateway_pb2_grpc.GatewayStub(channel)
