"""Storage for PHiLIP services: records, blobs, event streams and a work queue behind one async API."""

from __future__ import annotations

from philip.store.base import (
    DEFAULT_PREFIX,
    RecordNotFound,
    Store,
    StoreError,
    StoreUnavailable,
    StreamEntry,
)
from philip.store.memory import MemoryStore
from philip.store.redis_cluster import RedisClusterStore
from philip.store.redis_store import RedisStore

__all__ = [
    "DEFAULT_PREFIX",
    "MemoryStore",
    "RecordNotFound",
    "RedisClusterStore",
    "RedisStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StreamEntry",
    "open_store",
]


def open_store(url: str | None, *, prefix: str = DEFAULT_PREFIX, socket_timeout: float | None = 5.0,
               memory_mb: int = 0, max_connections: int = 64, cluster: bool = False) -> Store:
    """Open the store named by ``url``.

    None, "" or "memory://" give a fresh in-process ``MemoryStore``; "redis://", "rediss://" or
    "unix://" URLs give a ``RedisStore`` (``socket_timeout`` applies to Redis only), and
    "redis+cluster://" or "rediss+cluster://" (or a redis(s):// URL with ``cluster``) a
    ``RedisClusterStore`` on the Redis Cluster that node belongs to. Connecting is lazy, so an
    unreachable server shows up as ``StoreUnavailable`` on first use (or ``ping()`` False).
    ``memory_mb`` caps the in-process store (0: no cap); ``max_connections`` Redis's pool (per node
    on a cluster).
    """
    if not url or url == "memory://":
        return MemoryStore(prefix=prefix, max_bytes=memory_mb * (1 << 20) or None)
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis+cluster", "rediss+cluster") or (cluster and scheme in ("redis", "rediss")):
        return RedisClusterStore(url, prefix=prefix, socket_timeout=socket_timeout, max_connections=max_connections)
    if cluster:
        raise ValueError(f"a Redis Cluster needs a redis:// or rediss:// url, not {scheme}://")
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, prefix=prefix, socket_timeout=socket_timeout, max_connections=max_connections)
    raise ValueError(f"unsupported store url scheme {scheme!r} (use memory://, redis:// or redis+cluster://)")
