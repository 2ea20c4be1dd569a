"""``Store`` on Redis (>= 6.2 for XAUTOCLAIM/KEEPTTL) via redis.asyncio, bytes in and out.

``RedisStore`` talks to one server (or whatever a redis:// URL reaches); its subclass
:class:`~philip.store.redis_cluster.RedisClusterStore` to a Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, WatchError

from philip.store import redis_scripts
from philip.store.base import (
    DEFAULT_PREFIX,
    SUBSCRIBE_BLOCK_MS,
    RecordNotFound,
    Store,
    StoreError,
    StreamEntry,
    check_kind,
    check_ttl,
    holds,
    parse_stream_id,
)
from philip.store.redis_core import CLIENT_ERRORS
from philip.store.redis_fanout import Fanout, StreamFanout
from philip.store.redis_keys import Keys
from philip.store.redis_queue import RedisWorkQueue
from philip.store.redis_replies import END, PAYLOAD, entries, ms, read_reply, redact_url, text

MAX_UPDATE_ATTEMPTS = 100


class RedisStore(RedisWorkQueue, Store):
    """``Store`` backed by a Redis server; safe to share between coroutines of one event loop."""

    _layout: type[Keys] = Keys  # key names (a cluster's are hash-tagged)

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
        self._keys = self._layout(prefix)
        # Half the socket timeout: a blocking XREAD must answer before the socket gives up on it.
        self._max_block_ms = None if socket_timeout is None else max(10, int(socket_timeout * 500))
        options: dict[str, Any] = {
            "decode_responses": False, "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout if socket_connect_timeout is not None else socket_timeout,
            # A few quick retries ride out a restart/failover without stalling callers for long.
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries),
        }
        try:
            self._r, self._fanout = self._connect(url, options, max_connections)
        except (ValueError, RedisClusterException) as exc:
            raise StoreError(f"invalid redis url {self.url}: {exc}") from exc
        self._groups = set()
        self._incr_script = self._r.register_script(redis_scripts.INCR)
        self._acquire_lease_script = self._r.register_script(redis_scripts.ACQUIRE_LEASE)
        self._count_leases_script = self._r.register_script(redis_scripts.COUNT_LEASES)

    def _connect(self, url: str, options: dict[str, Any],
                 max_connections: int) -> tuple[Redis | RedisCluster, Fanout]:
        """The pooled client every call uses, and the fan-out that tails streams for subscribers."""
        # A full pool makes a caller wait for a connection (up to the socket timeout), not fail at once.
        pooled = Redis(connection_pool=BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=options["socket_timeout"] or 5.0, **options))
        # Every subscriber of this process tails its stream through one connection of its own.
        fanout = StreamFanout(Redis.from_url(url, **options), pooled, self._keys.stream, self._read_now,
                              f"{self.prefix}stream:_wake", self._max_block_ms or SUBSCRIBE_BLOCK_MS)
        return pooled, fanout

    # ---- records -------------------------------------------------------------------------------

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> None:
        check_kind(kind)
        check_ttl(ttl_s)
        body = json.dumps(data)
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(self._keys.record(kind, record_id), body, px=None if ttl_s is None else ms(ttl_s))
                pipe.sadd(self._keys.index(kind), record_id)
                await pipe.execute()

    async def create_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> bool:
        check_kind(kind)
        check_ttl(ttl_s)
        body = json.dumps(data)
        with self._errors():
            created = await self._r.set(self._keys.record(kind, record_id), body, nx=True,
                                        px=None if ttl_s is None else ms(ttl_s))
            if created:
                await self._r.sadd(self._keys.index(kind), record_id)
        return bool(created)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        check_kind(kind)
        with self._errors():
            raw = await self._r.get(self._keys.record(kind, record_id))
        return None if raw is None else json.loads(raw)

    async def update_record_if(self, kind: str, record_id: str, fields: dict[str, Any],
                               expect: Mapping[str, Collection[Any]]) -> dict[str, Any] | None:
        check_kind(kind)
        key = self._keys.record(kind, record_id)
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                # Optimistic WATCH/MULTI rather than Lua: cjson would mangle floats and empty lists.
                # A watched key that expires also aborts EXEC (Redis >= 6.0.9), so we never resurrect it.
                for _ in range(MAX_UPDATE_ATTEMPTS):
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
                pipe.delete(self._keys.record(kind, record_id))
                pipe.srem(self._keys.index(kind), record_id)
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def _exist(self, kind: str, record_ids: Sequence[str]) -> list[bool]:
        async with self._r.pipeline(transaction=False) as pipe:
            for rid in record_ids:
                pipe.exists(self._keys.record(kind, rid))
            return [bool(n) for n in await pipe.execute()]

    async def list_records(self, kind: str) -> list[str]:
        check_kind(kind)
        index = self._keys.index(kind)
        with self._errors():
            members = sorted(text(m) for m in await self._r.smembers(index))  # type: ignore[misc]
            if not members:
                return []
            alive = await self._exist(kind, members)
            # Records that expired by TTL leave their id in the index: prune them lazily here.
            stale = [rid for rid, ok in zip(members, alive, strict=True) if not ok]
            back: list[str] = []
            if stale:
                await self._r.srem(index, *stale)  # type: ignore[misc]
                # A put between our EXISTS and SREM had its SADD undone by the SREM: index those again. A put
                # after this check adds its id itself (writers SET the record before they SADD its id).
                back = [rid for rid, ok in zip(stale, await self._exist(kind, stale), strict=True) if ok]
                if back:
                    await self._r.sadd(index, *back)  # type: ignore[misc]
        return sorted([rid for rid, ok in zip(members, alive, strict=True) if ok] + back)

    # ---- blobs ---------------------------------------------------------------------------------

    async def put_blob(self, blob_id: str, data: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        with self._errors():
            await self._r.set(self._keys.blob(blob_id), data, px=ms(ttl_s))

    async def get_blob(self, blob_id: str) -> bytes | None:
        with self._errors():
            raw = await self._r.get(self._keys.blob(blob_id))
        return raw.encode() if isinstance(raw, str) else raw

    # ---- event streams -------------------------------------------------------------------------

    async def append_event(self, stream: str, payload: bytes, maxlen: int = 10_000) -> str:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        with self._errors():
            entry_id = await self._r.xadd(
                self._keys.stream(stream), {PAYLOAD: payload}, maxlen=maxlen, approximate=True
            )
        return text(entry_id)

    async def read_events(
        self, stream: str, after: str = "0-0", count: int = 100, block_ms: int | None = None
    ) -> list[StreamEntry]:
        parse_stream_id(after)  # same ValueError as the memory backend, not a server error
        key = self._keys.stream(stream)

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
            raw = await self._r.xrevrange(self._keys.stream(stream), max="+" if before is None else f"({before}",
                                          min="-", count=count + 1)  # + 1: the terminal marker may be among them
        return [entry for entry in entries(raw) if not entry.terminal][:count]

    async def trim_events_before(self, stream: str, before_ms: int) -> int:
        with self._errors():
            return int(await self._r.xtrim(self._keys.stream(stream), minid=f"{max(0, before_ms)}-0",
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
            return int(await self._r.xdel(self._keys.stream(stream), *ids))

    async def refresh_ttl(self, ttl_s: float, *, records: Sequence[tuple[str, str]] = (), blobs: Sequence[str] = (),
                          streams: Sequence[str] = ()) -> None:
        check_ttl(ttl_s)
        keys = ([self._keys.record(k, i) for k, i in records] + [self._keys.blob(b) for b in blobs]
                + [self._keys.stream(s) for s in streams])
        with self._errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(key, ms(ttl_s))
                await pipe.execute()

    async def close_stream(self, stream: str) -> str:
        with self._errors():
            entry_id = await self._r.xadd(self._keys.stream(stream), {END: b"1"})
        return text(entry_id)

    async def expire_stream(self, stream: str, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        with self._errors():
            return bool(await self._r.pexpire(self._keys.stream(stream), ms(ttl_s)))

    # ---- leases (quotas) -----------------------------------------------------------------------

    async def acquire_lease(self, key: str, holder: str, limit: int, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        with self._errors():
            granted = await self._acquire_lease_script(keys=[self._keys.lease(key)], args=[holder, limit, ms(ttl_s)])
        return bool(granted)

    async def release_lease(self, key: str, holder: str) -> bool:
        with self._errors():
            return bool(await self._r.zrem(self._keys.lease(key), holder))

    async def count_leases(self, key: str) -> int:
        with self._errors():
            return int(await self._count_leases_script(keys=[self._keys.lease(key)]))

    # ---- helpers -------------------------------------------------------------------------------

    async def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        check_ttl(ttl_s)
        with self._errors():
            value = await self._incr_script(
                keys=[self._keys.counter(key)], args=[by, "" if ttl_s is None else ms(ttl_s)]
            )
        return int(value)

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())  # type: ignore[misc]
        except CLIENT_ERRORS:
            return False

    async def close(self) -> None:
        await self._fanout.close()
        with self._errors():
            if isinstance(self._r, RedisCluster):
                await self._r.aclose()
            else:
                await self._r.aclose(close_connection_pool=True)
