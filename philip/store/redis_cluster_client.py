"""A Redis Cluster client whose callers wait for a free connection, as they do on one server.

redis-py's cluster client keeps a connection pool per node that never waits: with ``max_connections``
busy on a node the next call fails at once (MaxConnectionsError). A burst of, say, 300 subscribers
replaying their streams would then fail where one server's ``BlockingConnectionPool`` makes them queue.
``WaitingRedisCluster`` puts one semaphore of ``max_connections`` permits in front of every command and
pipeline: a command holds at most one connection at a time, and a pipeline at most one per node, so no
node ever sees more than ``max_connections`` of this client's connections and the per-node limit is
never hit. A caller that waits longer than ``wait_s`` gets a ConnectionError (``StoreUnavailable``).

It also finds the slot of an XREAD/XREADGROUP itself: redis-py cannot read those keys from the command
table (they follow the STREAMS keyword) and asks a server (COMMAND GETKEYS) before every such read,
one more round trip and connection each, all on the same node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

_OPTION_ARGS = {"COUNT": 1, "BLOCK": 1, "GROUP": 2, "NOACK": 0}  # XREAD/XREADGROUP options before STREAMS


def stream_read_keys(args: tuple[Any, ...]) -> list[Any] | None:
    """The keys of an XREAD/XREADGROUP's arguments (after the command name), None if they do not parse."""
    at = 0
    while at < len(args):
        word = args[at].decode() if isinstance(args[at], bytes) else str(args[at])
        if word.upper() == "STREAMS":
            rest = args[at + 1:]
            return list(rest[:len(rest) // 2]) if rest and len(rest) % 2 == 0 else None
        skip = _OPTION_ARGS.get(word.upper())
        if skip is None:
            return None
        at += 1 + skip
    return None


class WaitingRedisCluster(RedisCluster):
    """``RedisCluster`` with at most ``max_connections`` calls in flight; the others wait up to ``wait_s``."""

    def __init__(self, *args: Any, wait_s: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(int(kwargs.get("max_connections", 100)))
        self._wait_s = wait_s

    @asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._permits.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no connection free within {self._wait_s:g} s") from None
        try:
            yield
        finally:
            self._permits.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            return await super().execute_command(*args, **kwargs)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if str(command).upper() in ("XREAD", "XREADGROUP"):
            keys = stream_read_keys(args)
            slots = {self.keyslot(key) for key in keys or ()}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)  # (which rejects keys in several slots)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if transaction or shard_hint:  # the store never asks for either on a cluster (see redis_cluster.py)
            raise ValueError("cluster pipelines here are neither transactions nor shard-hinted")
        return _WaitingPipeline(self)  # type: ignore[abstract]  # (redis-py types the base as abstract too)


class _WaitingPipeline(ClusterPipeline):
    """A (non-transactional) cluster pipeline that takes one permit of its client while it executes."""

    __slots__ = ()

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, WaitingRedisCluster)
        async with client.permit():
            return await super().execute(raise_on_error, allow_redirections)
