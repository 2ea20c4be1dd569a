"""A Redis that is there but cannot serve now (a read-only replica, out of memory) is UNAVAILABLE with a retry
hint, not a bug: real redis-server processes on their own loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from philip.rpc.errors import Unavailable
from philip.rpc.status import DETAILS_KEY, to_rpc_status
from philip.store import RedisStore, StoreUnavailable

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server(*args: str) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def replica_url() -> Iterator[str]:
    # A replica of a master that is not there: it is up, answers reads, and refuses writes (READONLY).
    yield from _redis_server("--replicaof", "127.0.0.1", str(_free_port()))


@pytest.fixture
def full_url() -> Iterator[str]:
    yield from _redis_server("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")


async def test_a_read_only_replica_is_unavailable_with_a_retry_hint(replica_url: str) -> None:
    store = RedisStore(replica_url, retries=0)
    try:
        assert await store.get_record("job", "nope") is None  # reads work
        with pytest.raises(StoreUnavailable, match="cannot serve this now") as info:
            await store.put_record("job", "j1", {"state": "queued"}, ttl_s=60)
        assert info.value.retry_after_s == 1.0
    finally:
        await store.close()


async def test_a_full_redis_is_unavailable_not_internal(full_url: str) -> None:
    store = RedisStore(full_url, retries=0)
    try:
        with pytest.raises(StoreUnavailable) as info:
            for k in range(64):  # 64 x 256 KiB: well past 2 MB
                await store.put_blob(f"b{k}", bytes(256 * 1024), ttl_s=60)
        assert "OOM" in str(info.value) or "maxmemory" in str(info.value)
    finally:
        await store.close()
    # What a gRPC caller then gets (the interceptor turns StoreUnavailable into this): UNAVAILABLE + RetryInfo.
    status = to_rpc_status(Unavailable(f"store unavailable: {info.value}", retry_after_s=info.value.retry_after_s))
    assert status.code.name == "UNAVAILABLE" and DETAILS_KEY in dict(status.trailing_metadata)
