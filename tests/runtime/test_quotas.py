"""Per-tenant quotas on both store backends: limits per tenant, RetryInfo delay, leases that renew
while held and expire when their holder is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from philip.quotas import GENERATIONS, SESSIONS, TRAINING_JOBS, Quotas
from philip.rpc.auth import acting_as
from philip.rpc.errors import ResourceExhausted
from philip.store import MemoryStore, RedisStore, Store

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    redis = RedisStore(REDIS_URL, prefix=f"philip-test:{uuid.uuid4().hex}:", socket_timeout=2.0)
    if not await redis.ping():
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    yield redis
    await redis.close()


async def test_each_tenant_has_its_own_limit(store: Store) -> None:
    quotas = Quotas(store, {SESSIONS.name: 2})
    await quotas.acquire(SESSIONS, "s1", 60, tenant="acme")
    await quotas.acquire(SESSIONS, "s2", 60, tenant="acme")
    with pytest.raises(ResourceExhausted) as refused:
        await quotas.acquire(SESSIONS, "s3", 60, tenant="acme")
    assert refused.value.retry_after_s == SESSIONS.retry_after_s
    assert "'acme' already has 2 open sessions" in refused.value.message
    await quotas.acquire(SESSIONS, "s1", 60, tenant="acme")  # renewing a held slot is fine at the limit
    await quotas.acquire(SESSIONS, "g1", 60, tenant="globex")  # another tenant is not affected
    await quotas.release(SESSIONS, "s1", tenant="acme")
    await quotas.acquire(SESSIONS, "s3", 60, tenant="acme")
    assert await quotas.in_use(SESSIONS, "acme") == 2


async def test_no_tenant_or_a_zero_limit_means_no_quota(store: Store) -> None:
    quotas = Quotas(store, {SESSIONS.name: 1, TRAINING_JOBS.name: 0})
    for i in range(3):
        await quotas.acquire(SESSIONS, f"open{i}", 60, tenant="")  # an open gateway (development)
        await quotas.acquire(TRAINING_JOBS, f"job{i}", 60, tenant="acme")
    assert await quotas.in_use(SESSIONS, "") == 0


async def test_hold_renews_while_held_and_releases_after(store: Store) -> None:
    quotas = Quotas(store, {GENERATIONS.name: 1})
    with acting_as("acme"):
        async with quotas.hold(GENERATIONS, "job1", ttl_s=0.9):
            await asyncio.sleep(2.0)  # well past the lease: renewals (every 0.3 s) keep it
            with pytest.raises(ResourceExhausted):
                await quotas.acquire(GENERATIONS, "job2", 0.9)
        await quotas.acquire(GENERATIONS, "job2", 0.9)  # released at the end of the block


async def test_a_crashed_holders_slot_comes_back_when_its_lease_expires(store: Store) -> None:
    quotas = Quotas(store, {TRAINING_JOBS.name: 1})
    await quotas.acquire(TRAINING_JOBS, "lost", 0.3, tenant="acme")
    with pytest.raises(ResourceExhausted):
        await quotas.acquire(TRAINING_JOBS, "next", 0.3, tenant="acme")
    await asyncio.sleep(0.4)
    await quotas.acquire(TRAINING_JOBS, "next", 0.3, tenant="acme")
