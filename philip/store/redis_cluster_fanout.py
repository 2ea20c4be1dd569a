"""The fan-out on a Redis Cluster: one blocking XREAD per tailed stream, not one for all of them.

A cluster refuses an XREAD whose streams hash to different slots (CROSSSLOT), and streams of different
sessions or jobs do, by design (see :mod:`philip.store.redis_keys`). So each stream tailed in this
process gets a task of its own, blocked in a single-key XREAD on a connection of the fan-out's own
client (on the node that owns the stream). That is still one connection per tailed stream per process,
however many subscribers share it, and never one of the store's pool, so writes are never starved.
A new tail's task starts its XREAD at once, so no wake stream is needed: the first live event arrives
without waiting out anyone's block period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from redis.asyncio.cluster import RedisCluster

from philip.logs import get_logger
from philip.store.redis_core import CLIENT_ERRORS
from philip.store.redis_fanout import Fanout, Reader, ReadFn, Tail, by_key

log = get_logger("philip.store.fanout")

# Connections per node the fan-out may hold: one per stream tailed here that lives on that node.
FANOUT_MAX_CONNECTIONS = 1024


class ClusterStreamFanout(Fanout):
    """Tails each stream for every local subscriber through one blocking XREAD (on ``redis``, owned here)."""

    def __init__(self, redis: RedisCluster, key_of: Callable[[str], str], read: ReadFn, block_ms: int) -> None:
        super().__init__(key_of, read)
        self._redis = redis
        self._block_ms = block_ms
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failures = 0  # reads failed in a row, of any stream
        self._retry_at = 0.0  # after failures, new reads wait until then (monotonic), not hammer a sick cluster

    async def _start(self, stream: str, tail: Tail, *, new: bool) -> None:
        if stream not in self._tasks:
            self._tasks[stream] = asyncio.get_running_loop().create_task(
                self._run(stream, tail), name=f"stream-fanout:{stream}")

    def _leave(self, stream: str, reader: Reader) -> None:
        # The tail stays until its task's XREAD returns and finds nobody reading: a reader that joins
        # meanwhile reuses the blocked XREAD instead of starting a second one.
        tail = self._tails.get(stream)
        if tail is not None:
            tail.readers.discard(reader)

    async def _run(self, stream: str, tail: Tail) -> None:
        key = self._key_of(stream)
        try:
            await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
            while tail.readers and self._tails.get(stream) is tail:  # (close() drops every tail)
                try:
                    reply = await self._redis.xread({key: tail.cursor}, count=100, block=self._block_ms)
                except CLIENT_ERRORS as exc:
                    self._failures += 1
                    self.failed_reads += 1
                    self._retry_at = time.monotonic() + min(0.05 * 2 ** self._failures, 1.0)
                    log.warning("fanout.read_failed", error=str(exc), stream=stream)
                    return  # the readers replay on their own: they see the error, or the events
                self._failures = 0
                for _, raw in by_key(reply):
                    self._hand_out(tail, raw)
        finally:
            # No await from the last look at tail.readers to here: nobody joins a tail that is going.
            if self._tails.get(stream) is tail:
                del self._tails[stream]
            self._release(tail)
            if self._tasks.get(stream) is asyncio.current_task():
                del self._tasks[stream]

    async def close(self) -> None:
        self._release_all()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *CLIENT_ERRORS):
                await task
        with contextlib.suppress(*CLIENT_ERRORS):
            await self._redis.aclose()
