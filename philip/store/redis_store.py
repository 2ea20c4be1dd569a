"""``Store`` on Redis (>= 6.2 for XAUTOCLAIM/KEEPTTL) via redis.asyncio, bytes in and out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from philip.store import redis_scripts
from philip.store.base import (
    DEFAULT_PREFIX,
    SUBSCRIBE_BLOCK_MS,
    RecordNotFound,
    Store,
    StoreError,
    StoreUnavailable,
    StreamEntry,
    check_kind,
    check_ttl,
    holds,
    parse_stream_id,
)
from philip.store.redis_fanout import StreamFanout
from philip.store.redis_replies import (
    END,
    PAYLOAD,
    entries,
    is_nogroup,
    is_transient,
    ms,
    read_reply,
    redact_url,
    text,
)

T = TypeVar("T")

_MAX_UPDATE_ATTEMPTS = 100


class RedisStore(Store):
    """``Store`` backed by a Redis server; safe to share between coroutines of one event loop."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float | None = 5.0,
        socket_connect_timeout: float | None = None,
        retries: int = 2,
        max_connections: int = 64,
    ) -> None:
        self.prefix = prefix
        self.url = redact_url(url)
        # Half the socket timeout: a blocking XREAD must answer before the socket gives up on it.
        self._max_block_ms = None if socket_timeout is None else max(10, int(socket_timeout * 500))
        options: dict[str, Any] = {
            "decode_responses": False, "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout if socket_connect_timeout is not None else socket_timeout,
            # A few quick retries ride out a restart/failover without stalling callers for long.
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries),
        }
        try:
            # A full pool makes a caller wait for a connection (up to the socket timeout), not fail at once.
            self._r: Redis = Redis(connection_pool=BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=socket_timeout or 5.0, **options))
            # Every subscriber of this process tails its stream through one connection of its own.
            self._fanout = StreamFanout(Redis.from_url(url, **options), self._r, self._stream_key,
                                        self._read_now, f"{prefix}stream:_wake",
                                        self._max_block_ms or SUBSCRIBE_BLOCK_MS)
        except ValueError as exc:
            raise StoreError(f"invalid redis url {self.url}: {exc}") from exc
        self._groups: set[tuple[str, str]] = set()  # (queue key, group) known to exist
        self._incr_script = self._r.register_script(redis_scripts.INCR)
        self._acquire_lease_script = self._r.register_script(redis_scripts.ACQUIRE_LEASE)
        self._count_leases_script = self._r.register_script(redis_scripts.COUNT_LEASES)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate redis exceptions so that none leak to callers."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis at {self.url} unavailable: {exc}") from exc
        except RedisError as exc:
            if is_transient(exc):
                # The server is there but cannot serve this now; another try (or replica) will.
                raise StoreUnavailable(f"redis at {self.url} cannot serve this now: {exc}") from exc
            raise StoreError(f"redis at {self.url} failed: {exc}") from exc

    # ---- keys ----------------------------------------------------------------------------------

    def _record_key(self, kind: str, record_id: str) -> str:
        return f"{self.prefix}{kind}:{record_id}"

    def _index_key(self, kind: str) -> str:
        return f"{self.prefix}idx:{kind}"

    def _blob_key(self, blob_id: str) -> str:
        return f"{self.prefix}blob:{blob_id}"

    def _stream_key(self, stream: str) -> str:
        return f"{self.prefix}stream:{stream}"

    def _queue_key(self, queue: str) -> str:
        return f"{self.prefix}queue:{queue}"

    def _counter_key(self, key: str) -> str:
        return f"{self.prefix}counter:{key}"

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    # ---- records -------------------------------------------------------------------------------

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> None:
        check_kind(kind)
        check_ttl(ttl_s)
        body = json.dumps(data)
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(self._record_key(kind, record_id), body, px=None if ttl_s is None else ms(ttl_s))
                pipe.sadd(self._index_key(kind), record_id)
                await pipe.execute()

    async def create_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> bool:
        check_kind(kind)
        check_ttl(ttl_s)
        body = json.dumps(data)
        with self._errors():
            created = await self._r.set(self._record_key(kind, record_id), body, nx=True,
                                        px=None if ttl_s is None else ms(ttl_s))
            if created:
                await self._r.sadd(self._index_key(kind), record_id)
        return bool(created)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        check_kind(kind)
        with self._errors():
            raw = await self._r.get(self._record_key(kind, record_id))
        return None if raw is None else json.loads(raw)

    async def update_record_if(self, kind: str, record_id: str, fields: dict[str, Any],
                               expect: Mapping[str, Collection[Any]]) -> dict[str, Any] | None:
        check_kind(kind)
        key = self._record_key(kind, record_id)
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                # Optimistic WATCH/MULTI rather than Lua: cjson would mangle floats and empty lists.
                # A watched key that expires also aborts EXEC (Redis >= 6.0.9), so we never resurrect it.
                for _ in range(_MAX_UPDATE_ATTEMPTS):
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        if raw is None:
                            raise RecordNotFound(kind, record_id)
                        current = json.loads(raw)
                        if not holds(current, expect):
                            return None  # leaving the block unwatches
                        merged: dict[str, Any] = {**current, **fields}
                        pipe.multi()
                        pipe.set(key, json.dumps(merged), keepttl=True)
                        await pipe.execute()
                        return merged
                    except WatchError:
                        continue
        raise StoreError(f"update of {kind} {record_id!r} kept conflicting; gave up")

    async def delete_record(self, kind: str, record_id: str) -> bool:
        check_kind(kind)
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.delete(self._record_key(kind, record_id))
                pipe.srem(self._index_key(kind), record_id)
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def list_records(self, kind: str) -> list[str]:
        check_kind(kind)
        index = self._index_key(kind)
        with self._errors():
            members = sorted(text(m) for m in await self._r.smembers(index))  # type: ignore[misc]
            if not members:
                return []
            async with self._r.pipeline(transaction=False) as pipe:
                for rid in members:
                    pipe.exists(self._record_key(kind, rid))
                alive = await pipe.execute()
            # Records that expired by TTL leave their id in the index: prune them lazily here.
            stale = [rid for rid, ok in zip(members, alive, strict=True) if not ok]
            if stale:
                await self._r.srem(index, *stale)  # type: ignore[misc]
        return [rid for rid, ok in zip(members, alive, strict=True) if ok]

    # ---- blobs ---------------------------------------------------------------------------------

    async def put_blob(self, blob_id: str, data: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        with self._errors():
            await self._r.set(self._blob_key(blob_id), data, px=ms(ttl_s))

    async def get_blob(self, blob_id: str) -> bytes | None:
        with self._errors():
            raw = await self._r.get(self._blob_key(blob_id))
        return raw.encode() if isinstance(raw, str) else raw

    # ---- event streams -------------------------------------------------------------------------

    async def _blocking(self, block_ms: int | None, call: Callable[[int | None], Awaitable[T]]) -> T:
        """Run a blocking stream read, split into chunks shorter than the socket timeout."""
        if block_ms is None or self._max_block_ms is None:
            return await call(block_ms)
        remaining = block_ms
        while True:
            chunk = self._max_block_ms if block_ms == 0 else min(remaining, self._max_block_ms)
            result = await call(chunk)
            remaining -= chunk
            if result or (block_ms != 0 and remaining <= 0):
                return result

    async def append_event(self, stream: str, payload: bytes, maxlen: int = 10_000) -> str:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        with self._errors():
            entry_id = await self._r.xadd(
                self._stream_key(stream), {PAYLOAD: payload}, maxlen=maxlen, approximate=True
            )
        return text(entry_id)

    async def read_events(
        self, stream: str, after: str = "0-0", count: int = 100, block_ms: int | None = None
    ) -> list[StreamEntry]:
        parse_stream_id(after)  # same ValueError as the memory backend, not a server error
        key = self._stream_key(stream)

        async def call(block: int | None) -> Any:
            return await self._r.xread({key: after}, count=count, block=block)

        with self._errors():
            return read_reply(await self._blocking(block_ms, call))

    async def read_events_before(self, stream: str, before: str | None = None, count: int = 100) -> list[StreamEntry]:
        if before is not None:
            parse_stream_id(before)
        if count < 1:
            return []
        with self._errors():
            raw = await self._r.xrevrange(self._stream_key(stream), max="+" if before is None else f"({before}",
                                          min="-", count=count + 1)  # + 1: the terminal marker may be among them
        return [entry for entry in entries(raw) if not entry.terminal][:count]

    async def trim_events_before(self, stream: str, before_ms: int) -> int:
        with self._errors():
            return int(await self._r.xtrim(self._stream_key(stream), minid=f"{max(0, before_ms)}-0",
                                         approximate=False))

    async def _read_now(self, stream: str, after: str) -> list[StreamEntry]:
        return await self.read_events(stream, after=after, count=16)  # previews are large: small bites

    async def subscribe(self, stream: str, after: str = "0-0") -> AsyncIterator[StreamEntry]:
        parse_stream_id(after)
        async for entry in self._fanout.subscribe(stream, after):
            yield entry

    async def delete_events(self, stream: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._errors():
            return int(await self._r.xdel(self._stream_key(stream), *ids))

    async def refresh_ttl(self, ttl_s: float, *, records: Sequence[tuple[str, str]] = (), blobs: Sequence[str] = (),
                          streams: Sequence[str] = ()) -> None:
        check_ttl(ttl_s)
        keys = ([self._record_key(k, i) for k, i in records] + [self._blob_key(b) for b in blobs]
                + [self._stream_key(s) for s in streams])
        with self._errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(key, ms(ttl_s))
                await pipe.execute()

    async def close_stream(self, stream: str) -> str:
        with self._errors():
            entry_id = await self._r.xadd(self._stream_key(stream), {END: b"1"})
        return text(entry_id)

    async def expire_stream(self, stream: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        with self._errors():
            return bool(await self._r.pexpire(self._stream_key(stream), ms(ttl_s)))

    # ---- work queue ----------------------------------------------------------------------------

    async def enqueue(self, queue: str, payload: bytes) -> str:
        with self._errors():
            entry_id = await self._r.xadd(self._queue_key(queue), {PAYLOAD: payload})
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
        key = self._queue_key(queue)

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
                return bool(await self._r.xack(self._queue_key(queue), group, entry_id))
            except ResponseError as exc:
                if is_nogroup(exc):
                    return False
                raise

    async def reclaim(
        self, queue: str, group: str, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[StreamEntry]:
        key = self._queue_key(queue)

        async def autoclaim() -> Any:
            return await self._r.xautoclaim(key, group, consumer, min_idle_ms, start_id="0-0", count=count)

        with self._errors():
            reply = await self._in_group(key, group, autoclaim)
        # Reply is [next_cursor, entries, deleted_ids]; deleted ids are already dropped from the PEL.
        return entries(reply[1])

    async def touch(self, queue: str, group: str, consumer: str, entry_id: str) -> bool:
        key = self._queue_key(queue)
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
                summary = await self._r.xpending(self._queue_key(queue), group)
            except ResponseError as exc:
                if is_nogroup(exc):
                    return 0
                raise
        return int(summary["pending"])

    # ---- leases (quotas) -----------------------------------------------------------------------

    async def acquire_lease(self, key: str, holder: str, limit: int, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        with self._errors():
            granted = await self._acquire_lease_script(keys=[self._lease_key(key)], args=[holder, limit, ms(ttl_s)])
        return bool(granted)

    async def release_lease(self, key: str, holder: str) -> bool:
        with self._errors():
            return bool(await self._r.zrem(self._lease_key(key), holder))

    async def count_leases(self, key: str) -> int:
        with self._errors():
            return int(await self._count_leases_script(keys=[self._lease_key(key)]))

    # ---- helpers -------------------------------------------------------------------------------

    async def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        check_ttl(ttl_s)
        with self._errors():
            value = await self._incr_script(
                keys=[self._counter_key(key)], args=[by, "" if ttl_s is None else ms(ttl_s)]
            )
        return int(value)

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())  # type: ignore[misc]
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._fanout.close()
        with self._errors():
            await self._r.aclose(close_connection_pool=True)
