"""In-process ``Store`` with Redis semantics, for tests and single-process runs.

Operations never await between reading and writing state, so each one is atomic with respect to
other coroutines on the loop. TTLs are enforced lazily on access using ``time.monotonic``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from philip.store import memory_limits
from philip.store.base import (
    DEFAULT_PREFIX,
    RecordNotFound,
    Store,
    StreamEntry,
    check_kind,
    check_ttl,
    holds,
    parse_stream_id,
)
from philip.store.memory_items import Item, Stream, StreamId, deadline, timeout_s
from philip.store.memory_queue import MemoryQueues, QueueState


class MemoryStore(MemoryQueues, Store):
    """``Store`` kept in process memory; all state is lost when the process exits."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, *, max_bytes: int | None = None,
                 sweep_every_s: float = 30.0) -> None:
        self.prefix = prefix
        self.max_bytes = max_bytes  # PHILIP_MEMORY_STORE_MB: held by memory_limits.evict
        self.sweep_every_s = sweep_every_s
        self._written = 0  # bytes written since the last look at the cap
        self._sweeper: asyncio.Task[None] | None = None
        self._records: dict[tuple[str, str], Item[str]] = {}
        self._blobs: dict[str, Item[bytes]] = {}
        self._streams: dict[str, Stream] = {}
        self._queues: dict[str, QueueState] = {}
        self._counters: dict[str, Item[int]] = {}
        self._leases: dict[str, dict[str, float]] = {}  # key -> holder -> time.monotonic() deadline
        # One condition for every stream and queue: appends are rare enough that waking all
        # blocked readers, who re-check their own stream, costs nothing.
        self._changed = asyncio.Condition()

    def _wrote(self, n: int) -> None:
        """Bookkeeping of every write: the sweep timer starts with the first, the cap is looked at every few MB."""
        if self._sweeper is None:
            with contextlib.suppress(RuntimeError):  # no running loop: sweeps wait for one
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="memory-sweep")
        self._written += n
        if self.max_bytes is not None and self._written > max(1 << 20, self.max_bytes // 20):
            self._written = 0
            memory_limits.evict(self, self.max_bytes)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            memory_limits.sweep(self)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- records -------------------------------------------------------------------------------

    def _live_record(self, kind: str, record_id: str) -> Item[str] | None:
        item = self._records.get((kind, record_id))
        if item is not None and item.expired(time.monotonic()):
            del self._records[(kind, record_id)]
            return None
        return item

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> None:
        check_kind(kind)
        check_ttl(ttl_s)
        # Stored serialised, as in Redis: callers cannot mutate stored state through their dict.
        body = json.dumps(data)
        self._records[(kind, record_id)] = Item(body, deadline(ttl_s))
        self._wrote(len(body))

    async def create_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> bool:
        check_kind(kind)
        check_ttl(ttl_s)
        if self._live_record(kind, record_id) is not None:  # no await in between: atomic on the loop
            return False
        body = json.dumps(data)
        self._records[(kind, record_id)] = Item(body, deadline(ttl_s))
        self._wrote(len(body))
        return True

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        check_kind(kind)
        item = self._live_record(kind, record_id)
        return None if item is None else json.loads(item.value)

    async def update_record_if(self, kind: str, record_id: str, fields: dict[str, Any],
                               expect: Mapping[str, Collection[Any]]) -> dict[str, Any] | None:
        check_kind(kind)
        item = self._live_record(kind, record_id)
        if item is None:
            raise RecordNotFound(kind, record_id)
        current = json.loads(item.value)
        if not holds(current, expect):
            return None
        merged: dict[str, Any] = {**current, **fields}
        item.value = json.dumps(merged)  # expires_at untouched: the TTL is kept
        return merged

    async def refresh_ttl(self, ttl_s: float, *, records: Sequence[tuple[str, str]] = (), blobs: Sequence[str] = (),
                          streams: Sequence[str] = ()) -> None:
        check_ttl(ttl_s)
        items: list[Item[Any] | None] = [self._live_record(k, i) for k, i in records]
        items += [self._live_blob(b) for b in blobs]
        for item in items:
            if item is not None:
                item.expires_at = deadline(ttl_s)
        for name in streams:
            if (s := self._live_stream(name)) is not None:
                s.expires_at = deadline(ttl_s)

    async def delete_record(self, kind: str, record_id: str) -> bool:
        check_kind(kind)
        if self._live_record(kind, record_id) is None:
            return False
        del self._records[(kind, record_id)]
        return True

    async def list_records(self, kind: str) -> list[str]:
        check_kind(kind)
        ids = [rid for (k, rid) in list(self._records) if k == kind]
        return sorted(rid for rid in ids if self._live_record(kind, rid) is not None)

    # ---- blobs ---------------------------------------------------------------------------------

    async def put_blob(self, blob_id: str, data: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        self._blobs[blob_id] = Item(bytes(data), deadline(ttl_s))
        self._wrote(len(data))

    def _live_blob(self, blob_id: str) -> Item[bytes] | None:
        item = self._blobs.get(blob_id)
        if item is not None and item.expired(time.monotonic()):
            del self._blobs[blob_id]
            return None
        return item

    async def get_blob(self, blob_id: str) -> bytes | None:
        item = self._live_blob(blob_id)
        return None if item is None else item.value

    # ---- event streams -------------------------------------------------------------------------

    def _live_stream(self, stream: str) -> Stream | None:
        s = self._streams.get(stream)
        if s is not None and s.expires_at is not None and time.monotonic() >= s.expires_at:
            del self._streams[stream]
            return None
        return s

    async def append_event(self, stream: str, payload: bytes, maxlen: int = 10_000) -> str:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        s = self._live_stream(stream) or self._streams.setdefault(stream, Stream())
        entry = s.append(bytes(payload))
        self._wrote(len(payload))
        if len(s.entries) > maxlen:  # exact trimming satisfies "at least maxlen" too
            del s.entries[: len(s.entries) - maxlen]
        await self._notify()
        return entry.id

    def _read_now(self, stream: str, after: StreamId, count: int) -> list[StreamEntry]:
        s = self._live_stream(stream)
        return [] if s is None else [e.public() for e in s.after(after, count)]

    async def read_events(
        self, stream: str, after: str = "0-0", count: int = 100, block_ms: int | None = None
    ) -> list[StreamEntry]:
        after_key = parse_stream_id(after)
        found = self._read_now(stream, after_key, count)
        if found or block_ms is None:
            return found
        try:
            async with asyncio.timeout(timeout_s(block_ms)), self._changed:
                await self._changed.wait_for(lambda: bool(self._read_now(stream, after_key, 1)))
                return self._read_now(stream, after_key, count)
        except TimeoutError:
            return []

    async def read_events_before(self, stream: str, before: str | None = None, count: int = 100) -> list[StreamEntry]:
        end = parse_stream_id(before) if before is not None else None
        s = self._live_stream(stream)
        if s is None or count < 1:
            return []
        stop = len(s.entries) if end is None else bisect.bisect_left(s.entries, end, key=lambda e: e.key)
        found = [e.public() for e in reversed(s.entries[:stop]) if not e.terminal]
        return found[:count]

    async def trim_events_before(self, stream: str, before_ms: int) -> int:
        s = self._live_stream(stream)
        if s is None:
            return 0
        stop = bisect.bisect_left(s.entries, (before_ms, 0), key=lambda e: e.key)
        del s.entries[:stop]
        return stop

    async def delete_events(self, stream: str, ids: Sequence[str]) -> int:
        s = self._live_stream(stream)
        gone = {parse_stream_id(i) for i in ids}
        if s is None or not gone:
            return 0
        kept = [e for e in s.entries if e.key not in gone]
        removed = len(s.entries) - len(kept)
        s.entries = kept
        return removed

    async def close_stream(self, stream: str) -> str:
        s = self._live_stream(stream) or self._streams.setdefault(stream, Stream())
        entry = s.append(b"", terminal=True)
        await self._notify()
        return entry.id

    async def expire_stream(self, stream: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        s = self._live_stream(stream)
        if s is None:
            return False
        s.expires_at = deadline(ttl_s)
        return True

    # ---- leases (quotas) -----------------------------------------------------------------------

    def _live_leases(self, key: str) -> dict[str, float]:
        now = time.monotonic()
        leases = self._leases.setdefault(key, {})
        for holder in [h for h, until in leases.items() if until <= now]:
            del leases[holder]
        return leases

    async def acquire_lease(self, key: str, holder: str, limit: int, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        leases = self._live_leases(key)
        if holder not in leases and len(leases) >= limit:
            return False
        leases[holder] = time.monotonic() + ttl_s
        return True

    async def release_lease(self, key: str, holder: str) -> bool:
        return self._live_leases(key).pop(holder, None) is not None

    async def count_leases(self, key: str) -> int:
        return len(self._live_leases(key))

    # ---- helpers -------------------------------------------------------------------------------

    async def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        check_ttl(ttl_s)
        item = self._counters.get(key)
        if item is None or item.expired(time.monotonic()):
            item = self._counters[key] = Item(0)
        item.value += by
        if ttl_s is not None and item.expires_at is None:
            item.expires_at = deadline(ttl_s)
        return item.value

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Stop the sweep timer; state stays readable so tests can inspect it after close."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
