"""The work-queue half of :class:`~philip.store.redis_store.RedisStore`: a stream and its consumer groups.

Every command here names one key (the queue's stream), so it runs unchanged on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from philip.store.base import StreamEntry
from philip.store.redis_core import RedisCore
from philip.store.redis_replies import PAYLOAD, entries, is_nogroup, read_reply, text

T = TypeVar("T")


class RedisWorkQueue(RedisCore):
    """``enqueue``/``claim``/``ack``/``reclaim``/``touch``/``pending_count`` on Redis streams."""

    _groups: set[tuple[str, str]]  # (queue key, group) known to exist

    async def enqueue(self, queue: str, payload: bytes) -> str:
        with self._errors():
            entry_id = await self._r.xadd(self._keys.queue(queue), {PAYLOAD: payload})
        return text(entry_id)

    async def _ensure_group(self, key: str, group: str) -> None:
        if (key, group) in self._groups:
            return
        try:
            # id "0", not "$": items enqueued before the first claim must still be delivered.
            await self._r.xgroup_create(key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add((key, group))

    async def _in_group(self, key: str, group: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a group command, (re)creating the group if it is missing (e.g. the key was deleted)."""
        await self._ensure_group(key, group)
        try:
            return await call()
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self._groups.discard((key, group))
            await self._ensure_group(key, group)
            return await call()

    async def claim(
        self, queue: str, group: str, consumer: str, count: int = 1, block_ms: int | None = None
    ) -> list[StreamEntry]:
        key = self._keys.queue(queue)

        async def own_pending() -> Any:
            return await self._r.xreadgroup(group, consumer, {key: "0"}, count=count)

        async def new(block: int | None) -> Any:
            return await self._r.xreadgroup(group, consumer, {key: ">"}, count=count, block=block)

        async def new_chunked() -> Any:
            return await self._blocking(block_ms, new)

        with self._errors():
            # A restarted consumer resumes the work it had claimed but not acknowledged.
            reply = await self._in_group(key, group, own_pending)
            raw = (next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]) if reply else []
            gone = [eid for eid, fields in raw if fields is None]
            if gone:  # trimmed/deleted while pending: nothing left to do, drop them from the PEL
                await self._r.xack(key, group, *gone)
            if own := entries(raw):
                return own
            return read_reply(await self._in_group(key, group, new_chunked))

    async def ack(self, queue: str, group: str, entry_id: str) -> bool:
        with self._errors():
            try:
                return bool(await self._r.xack(self._keys.queue(queue), group, entry_id))
            except ResponseError as exc:
                if is_nogroup(exc):
                    return False
                raise

    async def reclaim(
        self, queue: str, group: str, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[StreamEntry]:
        key = self._keys.queue(queue)

        async def autoclaim() -> Any:
            return await self._r.xautoclaim(key, group, consumer, min_idle_ms, start_id="0-0", count=count)

        with self._errors():
            reply = await self._in_group(key, group, autoclaim)
        # Reply is [next_cursor, entries, deleted_ids]; deleted ids are already dropped from the PEL.
        return entries(reply[1])

    async def touch(self, queue: str, group: str, consumer: str, entry_id: str) -> bool:
        key = self._keys.queue(queue)
        with self._errors():
            try:
                owner = await self._r.xpending_range(key, group, min=entry_id, max=entry_id, count=1)
                if not owner or text(owner[0]["consumer"]) != consumer:  # type: ignore[arg-type]
                    return False
                # XCLAIM with min-idle 0 to the same consumer resets the idle time (JUSTID: no re-delivery).
                return bool(await self._r.xclaim(key, group, consumer, 0, [entry_id], justid=True))
            except ResponseError as exc:
                if is_nogroup(exc):
                    return False
                raise

    async def pending_count(self, queue: str, group: str) -> int:
        with self._errors():
            try:
                summary = await self._r.xpending(self._keys.queue(queue), group)
            except ResponseError as exc:
                if is_nogroup(exc):
                    return 0
                raise
        return int(summary["pending"])
