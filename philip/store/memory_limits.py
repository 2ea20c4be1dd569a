"""Bounds of the in-process store: a sweep of expired keys and a memory cap.

Expired keys are dropped lazily when touched (``MemoryStore``) and here, by :func:`sweep`, which the store
runs on a timer, so data nobody reads again does not stay. The cap (``PHILIP_MEMORY_STORE_MB``) is held by
:func:`evict`: when the bytes held pass it, the keys closest to expiring go first (as Redis'
``volatile-ttl``), i.e. finished sessions' event streams and the oldest images and records; keys without a
TTL (training jobs, adapters, a running session's events) are never evicted.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from philip.logs import get_logger

if TYPE_CHECKING:
    from philip.store.memory import MemoryStore

log = get_logger("philip.store.memory")
LOW_WATER = 0.9  # evict down to this share of the cap, so one write does not evict at every step


def sweep(store: MemoryStore) -> int:
    """Drop every expired record, blob, stream, counter and lease; returns how many keys went."""
    now = time.monotonic()
    gone = 0
    tables: tuple[dict[Any, Any], ...] = (store._records, store._blobs, store._counters)
    for table in tables:
        expired = [k for k, item in table.items() if item.expired(now)]
        for k in expired:
            del table[k]
        gone += len(expired)
    streams = [k for k, s in store._streams.items() if s.expires_at is not None and now >= s.expires_at]
    for k in streams:
        del store._streams[k]
    for key in list(store._leases):
        holders = store._leases[key]
        for holder in [h for h, deadline in holders.items() if deadline <= now]:
            del holders[holder]
        if not holders:
            del store._leases[key]
    return gone + len(streams)


def usage(store: MemoryStore) -> int:
    """Bytes held by values (records' JSON, blobs, stream payloads); keys and bookkeeping not counted."""
    return sum(size for _, _, size in _volatile(store, include_persistent=True))


def evict(store: MemoryStore, max_bytes: int) -> int:
    """Bring the store under ``LOW_WATER`` of ``max_bytes`` if it is over ``max_bytes``; returns bytes freed."""
    sweep(store)
    held = usage(store)
    if held <= max_bytes:
        return 0
    target, freed = int(max_bytes * LOW_WATER), 0
    for _, drop, size in sorted(_volatile(store), key=lambda c: c[0]):
        if held - freed <= target:
            break
        drop()
        freed += size
    log.warning("memory_store.evicted", freed_bytes=freed, held_bytes=held - freed, cap_bytes=max_bytes)
    return freed


def _volatile(store: MemoryStore,
              include_persistent: bool = False) -> Iterator[tuple[float, Callable[[], object], int]]:
    """(expiry deadline, a function that drops it, size) of every key with a TTL (and, for counting, the rest)."""
    never = float("inf")
    for rkey, item in list(store._records.items()):
        if item.expires_at is not None or include_persistent:
            yield item.expires_at or never, functools.partial(store._records.pop, rkey, None), len(item.value)
    for bkey, blob in list(store._blobs.items()):
        if blob.expires_at is not None or include_persistent:
            yield blob.expires_at or never, functools.partial(store._blobs.pop, bkey, None), len(blob.value)
    for skey, stream in list(store._streams.items()):
        if stream.expires_at is not None or include_persistent:
            size = sum(len(e.payload) for e in stream.entries)
            yield stream.expires_at or never, functools.partial(store._streams.pop, skey, None), size
