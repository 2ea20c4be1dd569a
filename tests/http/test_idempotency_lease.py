"""The Idempotency-Key's running lease on a real Redis: held for as long as the first request runs
(renewed, so a slow request is never run twice), and freed within its short life when the replica
that held it died (a SIGKILLed gateway must not block the key's retries for minutes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from starlette.responses import JSONResponse, Response

from philip.rpc.errors import FailedPrecondition
from philip.store import MemoryStore, RedisStore, StoreError
from services.gateway.http.idempotency import Idempotency
from tests.gateway.grpc_sessions_support import REDIS_URL

LEASE_S = 0.6


@pytest_asyncio.fixture
async def store() -> AsyncIterator[RedisStore]:
    redis_store = RedisStore(REDIS_URL, prefix=f"philip-test:{uuid.uuid4().hex}:", socket_timeout=2.0, retries=0)
    if not await redis_store.ping():
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    yield redis_store
    await redis_store.close()


async def test_a_slow_first_request_keeps_its_key_past_the_lease_life(store: RedisStore) -> None:
    idem, release, runs = Idempotency(store, running_lease_s=LEASE_S), asyncio.Event(), []

    async def slow() -> Response:
        runs.append(1)
        await release.wait()
        return JSONResponse({"made": len(runs)}, status_code=201)

    first = asyncio.create_task(idem.run("k1", "/v1/sessions", b"{}", slow))
    await asyncio.sleep(LEASE_S * 3)  # three lease lives: only the renewals keep it
    with pytest.raises(FailedPrecondition) as refused:
        await idem.run("k1", "/v1/sessions", b"{}", slow)
    assert refused.value.retry_after_s == 1.0 and "still running" in str(refused.value)
    release.set()
    assert (await first).status_code == 201
    replay = await idem.run("k1", "/v1/sessions", b"{}", slow)
    assert replay.headers["idempotency-replayed"] == "true" and runs == [1]


async def test_a_dead_holders_key_frees_within_the_lease_life(store: RedisStore) -> None:
    idem, runs = Idempotency(store, running_lease_s=LEASE_S), []

    async def make() -> Response:
        runs.append(1)
        return JSONResponse({"made": len(runs)}, status_code=201)

    # What a SIGKILLed replica leaves behind: its lease, never renewed and never released.
    assert await store.acquire_lease(f"idem:{idem.record_id('/v1/sessions', 'k2')}", "dead-replica", 1, LEASE_S)
    with pytest.raises(FailedPrecondition):
        await idem.run("k2", "/v1/sessions", b"{}", make)
    await asyncio.sleep(LEASE_S + 0.2)
    assert (await idem.run("k2", "/v1/sessions", b"{}", make)).status_code == 201 and runs == [1]


class _RedisGoneAfterWork(MemoryStore):
    """Redis goes away while the work runs: keeping the answer and releasing the lease both fail."""

    async def put_record(self, *args: Any, **kwargs: Any) -> None:
        raise StoreError("redis: connection refused")

    async def release_lease(self, key: str, holder: str) -> bool:
        raise StoreError("redis: connection refused")


async def test_work_done_before_redis_went_away_is_still_answered() -> None:
    idem = Idempotency(_RedisGoneAfterWork(), running_lease_s=LEASE_S)

    async def make() -> Response:
        return JSONResponse({"made": 1}, status_code=201)

    assert (await idem.run("k3", "/v1/sessions", b"{}", make)).status_code == 201
