"""Fault injection: the store's Redis restarts in the middle of a session.

With AOF persistence the session survives the restart and goes on (resume, feedback, finalize);
without persistence calls during the outage answer UNAVAILABLE, the session is gone afterwards
(NOT_FOUND) and new sessions work again. A private `redis-server` per test (skipped without one).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from philip.bench.server_process import free_port
from philip.clients.embedded import gateway_stub
from philip.clients.session import SessionClient
from philip.settings import Settings
from philip.store import RedisStore
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.personalizer.conftest import MODEL, UPSCALER

pytestmark = pytest.mark.slow
REDIS = shutil.which("redis-server")



@dataclass
class Redis:
    port: int
    folder: Path
    aof: bool
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS is not None
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes" if self.aof else "no", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            self.proc.wait(10)


@pytest.fixture(params=[True, False], ids=["aof", "no-persistence"])
def redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Redis]:
    if REDIS is None:
        pytest.skip("needs redis-server on PATH")
    server = Redis(free_port(), tmp_path, request.param)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def stub(redis: Redis, tmp_path: Path) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    store = RedisStore(f"redis://127.0.0.1:{redis.port}/0", prefix=f"philip-test:{uuid.uuid4().hex}:",
                       socket_timeout=1.0)
    settings = Settings(model_dir=str(MODEL), upscaler_path=str(UPSCALER), port=0, http_port=0, threads=1, grace_s=0.5,
                        adapters_dir=str(tmp_path / "adapters"))
    try:
        async with gateway_stub(settings=settings, store=store) as gateway:
            yield gateway
    finally:
        await store.close()


PARAMS = common_pb2.GenerationParams(prompt="a red circle on a blue background", num_images=2, steps=3, seed=5)


async def get_session(stub: gateway_pb2_grpc.GatewayStub, session_id: str) -> gateway_pb2.SessionSnapshot:
    return await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id), timeout=10)


async def once_redis_is_back(stub: gateway_pb2_grpc.GatewayStub, session_id: str) -> gateway_pb2.SessionSnapshot:
    """GetSession as a client would: UNAVAILABLE is retryable, so retry it for a while (pooled
    connections to the old Redis fail once before they reconnect)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await get_session(stub, session_id)
        except aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_session_across_a_redis_restart(redis: Redis, stub: gateway_pb2_grpc.GatewayStub) -> None:
    session = await SessionClient.start(stub, PARAMS, timeout_s=120)
    async with session:
        first = await session.next_round()
    session_id = session.session_id

    await asyncio.to_thread(redis.stop)
    with pytest.raises(aio.AioRpcError) as down:
        await get_session(stub, session_id)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE  # a clean, retryable answer, not INTERNAL
    await asyncio.to_thread(redis.start)

    if redis.aof:  # everything was persisted: reattach and finish the session
        snapshot = await once_redis_is_back(stub, session_id)
        assert [i.image.id for i in snapshot.rounds[0].images] == [i.image.id for i in first.images]
        resumed = await SessionClient.resume(stub, session_id, timeout_s=120)
        async with resumed:
            second = await resumed.feedback([first.images[0].image.id], [])
            final = await resumed.finalize(second.images[0].image.id)
        assert final.image.width == 4 * 64
    else:  # nothing survived: the session is gone, and the service works again
        with pytest.raises(aio.AioRpcError) as gone:
            await once_redis_is_back(stub, session_id)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        fresh = await SessionClient.start(stub, PARAMS, timeout_s=120)
        async with fresh:
            assert len((await fresh.next_round()).images) == 2
