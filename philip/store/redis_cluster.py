"""``Store`` on a Redis Cluster: the same contract as ``RedisStore``, no command crossing hash slots.

What changes against one server:

- Key names carry hash tags (:class:`~philip.store.redis_keys.ClusterKeys`), so each key's slot follows
  its id, and a session's record and stream share one slot.
- A record and its kind's index (``idx:<kind>``) lie in different slots, so ``put_record`` and
  ``delete_record`` write them one after the other instead of in one MULTI; the order makes that safe
  (see there and ``RedisStore.list_records``).
- ``update_record_if`` is a compare-and-set in Lua on the record's one key rather than WATCH/MULTI:
  redis-py's cluster transactions run every queued command through a private event loop in a worker
  thread while blocking the caller's loop, which an event loop serving many streams cannot afford.
- Subscribers share one blocking XREAD per tailed stream, not one for all the process tails (one XREAD
  cannot wait on keys in several slots): ``ClusterStreamFanout``.
- ``max_connections`` caps the calls in flight (so the connections to any one node); more wait, as on one
  server (``WaitingRedisCluster``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster

from philip.store import redis_scripts
from philip.store.base import SUBSCRIBE_BLOCK_MS, RecordNotFound, StoreError, check_kind, check_ttl, holds
from philip.store.redis_cluster_client import WaitingRedisCluster
from philip.store.redis_cluster_fanout import FANOUT_MAX_CONNECTIONS, ClusterStreamFanout
from philip.store.redis_keys import ClusterKeys
from philip.store.redis_replies import ms
from philip.store.redis_store import MAX_UPDATE_ATTEMPTS, RedisStore

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def node_url(url: str) -> str:
    """The redis:// (or rediss://) URL of the seed node a ``redis+cluster://`` URL names."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower(), scheme.lower())
    if not sep or plain not in ("redis", "rediss"):
        raise ValueError("a Redis Cluster needs a redis+cluster://, rediss+cluster://, redis:// or rediss:// url")
    return f"{plain}://{rest}"


class RedisClusterStore(RedisStore):
    """``Store`` backed by a Redis Cluster, reached through any one of its nodes (it finds the others)."""

    _layout = ClusterKeys

    def _connect(self, url: str, options: dict[str, Any],
                 max_connections: int) -> tuple[RedisCluster, ClusterStreamFanout]:
        seed = node_url(url)
        # Callers wait for a free connection (up to the socket timeout), as with one server's blocking pool.
        client = WaitingRedisCluster.from_url(seed, max_connections=max_connections,
                                              wait_s=options["socket_timeout"] or 5.0, **options)
        self._cas_script = client.register_script(redis_scripts.SET_IF_UNCHANGED)
        # The fan-out's own client: its blocked XREADs must never take connections the calls need.
        tails = WaitingRedisCluster.from_url(seed, max_connections=FANOUT_MAX_CONNECTIONS,
                                             wait_s=options["socket_timeout"] or 5.0, **options)
        fanout = ClusterStreamFanout(tails, self._keys.stream, self._read_now, self._max_block_ms or SUBSCRIBE_BLOCK_MS)
        return client, fanout

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> None:
        check_kind(kind)
        check_ttl(ttl_s)
        body = json.dumps(data)
        with self._errors():
            # SET, then SADD to the index (another slot, so no MULTI). Readers never lose an indexed record
            # to this order (see list_records); a crash in between leaves the record unlisted until it is
            # put again, as a stale index entry is left after a crash in delete_record.
            await self._r.set(self._keys.record(kind, record_id), body, px=None if ttl_s is None else ms(ttl_s))
            await self._r.sadd(self._keys.index(kind), record_id)

    async def delete_record(self, kind: str, record_id: str) -> bool:
        check_kind(kind)
        with self._errors():
            # SREM before DEL: a put racing this SETs before it SADDs, so if its record outlives our DEL,
            # its SADD came after our SREM and the record stays listed.
            await self._r.srem(self._keys.index(kind), record_id)
            return bool(await self._r.delete(self._keys.record(kind, record_id)))

    async def update_record_if(self, kind: str, record_id: str, fields: dict[str, Any],
                               expect: Mapping[str, Collection[Any]]) -> dict[str, Any] | None:
        check_kind(kind)
        key = self._keys.record(kind, record_id)
        with self._errors():
            for _ in range(MAX_UPDATE_ATTEMPTS):
                raw = await self._r.get(key)
                if raw is None:
                    raise RecordNotFound(kind, record_id)
                current = json.loads(raw)
                if not holds(current, expect):
                    return None
                merged: dict[str, Any] = {**current, **fields}
                # Exact compare-and-set on the bytes we read; a miss means another writer won: read again.
                if await self._cas_script(keys=[key], args=[raw, json.dumps(merged)]):
                    return merged
        raise StoreError(f"update of {kind} {record_id!r} kept conflicting; gave up")
