"""What every part of the Redis backend shares: the client, key names, error translation, chunked blocking."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from philip.store.base import StoreError, StoreUnavailable
from philip.store.redis_keys import Keys
from philip.store.redis_replies import is_transient

T = TypeVar("T")

# Raised when the client cannot reach the server (or no node of a cluster, or the node owning a slot).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, RedisClusterUnreachableError,
               SlotNotCoveredError)
# Everything a redis client raises: a cluster client's own errors are not RedisErrors.
CLIENT_ERRORS = (RedisError, RedisClusterException, OSError)


class RedisCore:
    """The state and helpers of :class:`~philip.store.redis_store.RedisStore` that its parts use."""

    url: str  # redacted: safe for messages
    _r: Redis | RedisCluster
    _keys: Keys
    _max_block_ms: int | None  # a blocking read longer than this is split (it must end before the socket times out)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate redis exceptions so that none leak to callers."""
        try:
            yield
        except UNREACHABLE as exc:
            raise StoreUnavailable(f"redis at {self.url} unavailable: {exc}") from exc
        except RedisError as exc:
            if is_transient(exc):
                # The server is there but cannot serve this now; another try (or replica) will.
                raise StoreUnavailable(f"redis at {self.url} cannot serve this now: {exc}") from exc
            raise StoreError(f"redis at {self.url} failed: {exc}") from exc
        except RedisClusterException as exc:  # e.g. a command the cluster cannot route: a bug, not an outage
            raise StoreError(f"redis cluster at {self.url} failed: {exc}") from exc

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
