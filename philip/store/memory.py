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
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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

T = TypeVar("T")
StreamId = tuple[int, int]


@dataclass(slots=True)
class _Item(Generic[T]):
    value: T
    expires_at: float | None = None  # time.monotonic() deadline

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(slots=True)
class _Entry:
    key: StreamId
    id: str
    payload: bytes
    terminal: bool = False

    def public(self) -> StreamEntry:
        return StreamEntry(self.id, self.payload, self.terminal)


@dataclass(slots=True)
class _Stream:
    entries: list[_Entry] = field(default_factory=list)
    last: StreamId = (0, 0)
    expires_at: float | None = None

    def append(self, payload: bytes, terminal: bool = False) -> _Entry:
        # Redis-style "<ms>-<seq>" ids from the wall clock, forced to increase strictly even if the
        # clock stalls or steps back.
        ms = int(time.time() * 1000)
        key = (ms, 0) if ms > self.last[0] else (self.last[0], self.last[1] + 1)
        self.last = key
        entry = _Entry(key, f"{key[0]}-{key[1]}", payload, terminal)
        self.entries.append(entry)
        return entry

    def after(self, after: StreamId, count: int) -> list[_Entry]:
        start = bisect.bisect_right(self.entries, after, key=lambda e: e.key)
        return self.entries[start : start + count]


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered_at: float  # time.monotonic()
    deliveries: int = 1


@dataclass(slots=True)
class _Group:
    last_delivered: StreamId = (0, 0)  # like XGROUP CREATE ... 0: earlier entries are delivered too
    pel: dict[str, _Pending] = field(default_factory=dict)  # entry id -> owner, insertion = id order


@dataclass(slots=True)
class _Queue:
    stream: _Stream = field(default_factory=_Stream)
    by_id: dict[str, _Entry] = field(default_factory=dict)
    groups: dict[str, _Group] = field(default_factory=dict)


def _deadline(ttl_s: float | None) -> float | None:
    return None if ttl_s is None else time.monotonic() + ttl_s


def _timeout_s(block_ms: int) -> float | None:
    return None if block_ms == 0 else block_ms / 1000


class MemoryStore(Store):
    """``Store`` kept in process memory; all state is lost when the process exits."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, *, max_bytes: int | None = None,
                 sweep_every_s: float = 30.0) -> None:
        self.prefix = prefix
        self.max_bytes = max_bytes  # PHILIP_MEMORY_STORE_MB: held by memory_limits.evict
        self.sweep_every_s = sweep_every_s
        self._written = 0  # bytes written since the last look at the cap
        self._sweeper: asyncio.Task[None] | None = None
        self._records: dict[tuple[str, str], _Item[str]] = {}
        self._blobs: dict[str, _Item[bytes]] = {}
        self._streams: dict[str, _Stream] = {}
        self._queues: dict[str, _Queue] = {}
        self._counters: dict[str, _Item[int]] = {}
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

    def _live_record(self, kind: str, record_id: str) -> _Item[str] | None:
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
        self._records[(kind, record_id)] = _Item(body, _deadline(ttl_s))
        self._wrote(len(body))

    async def create_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> bool:
        check_kind(kind)
        check_ttl(ttl_s)
        if self._live_record(kind, record_id) is not None:  # no await in between: atomic on the loop
            return False
        body = json.dumps(data)
        self._records[(kind, record_id)] = _Item(body, _deadline(ttl_s))
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
        items: list[_Item[Any] | None] = [self._live_record(k, i) for k, i in records]
        items += [self._live_blob(b) for b in blobs]
        for item in items:
            if item is not None:
                item.expires_at = _deadline(ttl_s)
        for name in streams:
            if (s := self._live_stream(name)) is not None:
                s.expires_at = _deadline(ttl_s)

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
        self._blobs[blob_id] = _Item(bytes(data), _deadline(ttl_s))
        self._wrote(len(data))

    def _live_blob(self, blob_id: str) -> _Item[bytes] | None:
        item = self._blobs.get(blob_id)
        if item is not None and item.expired(time.monotonic()):
            del self._blobs[blob_id]
            return None
        return item

    async def get_blob(self, blob_id: str) -> bytes | None:
        item = self._live_blob(blob_id)
        return None if item is None else item.value

    # ---- event streams -------------------------------------------------------------------------

    def _live_stream(self, stream: str) -> _Stream | None:
        s = self._streams.get(stream)
        if s is not None and s.expires_at is not None and time.monotonic() >= s.expires_at:
            del self._streams[stream]
            return None
        return s

    async def append_event(self, stream: str, payload: bytes, maxlen: int = 10_000) -> str:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        s = self._live_stream(stream) or self._streams.setdefault(stream, _Stream())
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
            async with asyncio.timeout(_timeout_s(block_ms)), self._changed:
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
        s = self._live_stream(stream) or self._streams.setdefault(stream, _Stream())
        entry = s.append(b"", terminal=True)
        await self._notify()
        return entry.id

    async def expire_stream(self, stream: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        s = self._live_stream(stream)
        if s is None:
            return False
        s.expires_at = _deadline(ttl_s)
        return True

    # ---- work queue ----------------------------------------------------------------------------

    async def enqueue(self, queue: str, payload: bytes) -> str:
        q = self._queues.setdefault(queue, _Queue())
        entry = q.stream.append(bytes(payload))
        q.by_id[entry.id] = entry
        await self._notify()
        return entry.id

    @staticmethod
    def _deliver(q: _Queue, g: _Group, consumer: str, count: int) -> list[StreamEntry]:
        new = q.stream.after(g.last_delivered, count)
        now = time.monotonic()
        for e in new:
            g.pel[e.id] = _Pending(consumer, now)
        if new:
            g.last_delivered = new[-1].key
        return [e.public() for e in new]

    async def claim(
        self, queue: str, group: str, consumer: str, count: int = 1, block_ms: int | None = None
    ) -> list[StreamEntry]:
        q = self._queues.setdefault(queue, _Queue())
        g = q.groups.setdefault(group, _Group())
        own = [eid for eid, p in g.pel.items() if p.consumer == consumer][:count]
        if own:
            # Re-reading history counts as a delivery, as XREADGROUP ... 0 does.
            now = time.monotonic()
            for eid in own:
                g.pel[eid].delivered_at = now
                g.pel[eid].deliveries += 1
            return [q.by_id[eid].public() for eid in own]
        found = self._deliver(q, g, consumer, count)
        if found or block_ms is None:
            return found
        try:
            async with asyncio.timeout(_timeout_s(block_ms)), self._changed:
                await self._changed.wait_for(lambda: bool(q.stream.after(g.last_delivered, 1)))
                # Still holding the lock with no await since the check: nobody else took them.
                return self._deliver(q, g, consumer, count)
        except TimeoutError:
            return []

    async def ack(self, queue: str, group: str, entry_id: str) -> bool:
        q = self._queues.get(queue)
        g = q.groups.get(group) if q else None
        return g is not None and g.pel.pop(entry_id, None) is not None

    async def reclaim(
        self, queue: str, group: str, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[StreamEntry]:
        q = self._queues.setdefault(queue, _Queue())
        g = q.groups.setdefault(group, _Group())
        now = time.monotonic()
        taken: list[StreamEntry] = []
        for eid, p in g.pel.items():
            if len(taken) >= count:
                break
            if (now - p.delivered_at) * 1000 >= min_idle_ms:
                p.consumer, p.delivered_at, p.deliveries = consumer, now, p.deliveries + 1
                taken.append(q.by_id[eid].public())
        return taken

    async def touch(self, queue: str, group: str, consumer: str, entry_id: str) -> bool:
        q = self._queues.get(queue)
        g = q.groups.get(group) if q else None
        pending = g.pel.get(entry_id) if g else None
        if pending is None or pending.consumer != consumer:
            return False
        pending.delivered_at = time.monotonic()
        return True

    async def pending_count(self, queue: str, group: str) -> int:
        q = self._queues.get(queue)
        g = q.groups.get(group) if q else None
        return 0 if g is None else len(g.pel)

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
            item = self._counters[key] = _Item(0)
        item.value += by
        if ttl_s is not None and item.expires_at is None:
            item.expires_at = _deadline(ttl_s)
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
