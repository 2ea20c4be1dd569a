"""The in-process store's work queue: Redis Streams consumer-group semantics (PEL, claim, reclaim, touch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from philip.store.base import StreamEntry
from philip.store.memory_items import Entry, Stream, StreamId, timeout_s


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
class QueueState:
    stream: Stream = field(default_factory=Stream)
    by_id: dict[str, Entry] = field(default_factory=dict)
    groups: dict[str, _Group] = field(default_factory=dict)


class MemoryQueues:
    """Mixed into ``MemoryStore``: its queues, woken through the store's one condition."""

    _queues: dict[str, QueueState]
    _changed: asyncio.Condition
    _notify: Callable[[], Awaitable[None]]

    async def enqueue(self, queue: str, payload: bytes) -> str:
        q = self._queues.setdefault(queue, QueueState())
        entry = q.stream.append(bytes(payload))
        q.by_id[entry.id] = entry
        await self._notify()
        return entry.id

    @staticmethod
    def _deliver(q: QueueState, g: _Group, consumer: str, count: int) -> list[StreamEntry]:
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
        q = self._queues.setdefault(queue, QueueState())
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
            async with asyncio.timeout(timeout_s(block_ms)), self._changed:
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
        q = self._queues.setdefault(queue, QueueState())
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
