"""The in-process store sweeps what expired and holds its memory cap (the Docker image's default store)."""

from __future__ import annotations

import asyncio

from philip.store import MemoryStore
from philip.store.memory_limits import sweep, usage


async def test_a_thousand_expired_jobs_are_gone_after_a_sweep() -> None:
    store = MemoryStore(sweep_every_s=0.05)
    try:
        for k in range(1000):
            await store.put_record("job", f"j{k}", {"state": "done", "k": k}, ttl_s=0.01)
            await store.put_blob(f"b{k}", b"png" * 10, ttl_s=0.01)
        await store.put_record("adapter", "ad1", {"token": "sks"})  # no TTL: kept
        await store.append_event("job:j1", b"event")
        await store.expire_stream("job:j1", 0.01)
        await asyncio.sleep(0.2)  # the timer's sweep runs; nothing reads the keys
        assert len(store._records) == 1 and not store._blobs and not store._streams
        assert await store.get_record("adapter", "ad1") == {"token": "sks"}
        assert sweep(store) == 0
    finally:
        await store.close()


async def test_the_cap_holds_and_evicts_what_expires_soonest_first() -> None:
    cap = 4 << 20
    store = MemoryStore(max_bytes=cap)
    try:
        await store.put_record("adapter", "ad1", {"token": "sks"})  # no TTL: never evicted
        await store.append_event("session:running", b"x" * 1000)  # a running session's events: no TTL
        for k in range(40):  # 40 x 256 KiB = 10 MiB of images, later ones living longer
            await store.put_blob(f"img{k}", bytes(256 * 1024), ttl_s=3600 + k)
            assert usage(store) <= cap + (1 << 20)  # looked at every MiB written: never far over
        assert usage(store) <= cap
        kept = [k for k in range(40) if await store.get_blob(f"img{k}") is not None]
        assert kept and kept == list(range(40 - len(kept), 40))  # the ones nearest to expiring went first
        assert await store.get_record("adapter", "ad1") == {"token": "sks"}
        assert len(store._streams["session:running"].entries) == 1
    finally:
        await store.close()
