"""One blocking XREAD per process for every stream someone tails here, fanned out to local readers.

Without it each subscriber held a pooled connection in its own blocking XREAD, so about a hundred
open streams left nothing for writes ("Too many connections"). Here one task on a connection of
its own reads every tailed stream at once and hands each entry to the stream's readers; a reader
joins once it has replayed the stream up to the tail (short non-blocking reads on the pool), and
one that falls behind by more than ``LAG_LIMIT`` entries or ``LAG_BYTES`` leaves the tail and
replays from the store again, so a slow reader costs a bounded amount of memory and loses nothing.

A reader that joins a stream the loop is not yet reading wakes the loop by an XADD to this
process's own wake stream, which every XREAD also waits on.

On a Redis Cluster one XREAD cannot wait on streams in different hash slots, so
:class:`~philip.store.redis_cluster_fanout.ClusterStreamFanout` reads each tailed stream with a
blocking XREAD of its own instead; the readers' side (``Fanout``) is the same.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from philip.logs import get_logger
from philip.store.base import StreamEntry, parse_stream_id
from philip.store.redis_replies import entries, text

log = get_logger("philip.store.fanout")

LAG_LIMIT = 256  # entries a reader may have waiting before it goes back to replaying from the store
LAG_BYTES = 8 << 20  # ... or bytes of them (previews are large)
WAKE_TTL_MS = 3_600_000  # the wake stream of a process that died goes away on its own
ReadFn = Callable[[str, str], Awaitable[list[StreamEntry]]]  # (stream, after) -> entries, non-blocking


@dataclass(eq=False, slots=True)
class Reader:
    """One local subscriber on a stream's tail."""

    entries: deque[StreamEntry] = field(default_factory=deque)
    waiting_bytes: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lagged: bool = False  # fell behind (or the loop lost Redis): replay from the store


@dataclass(slots=True)
class Tail:
    """A stream tailed in this process, and who reads it."""

    cursor: str  # the last id the loop has read of this stream
    readers: set[Reader] = field(default_factory=set)


class Fanout(abc.ABC):
    """The readers' side of a fan-out: replay, join a stream's tail, take what the tail hands out, leave.

    Subclasses read the tails from Redis: ``_start`` makes sure a tail is read, and the reading hands
    each batch to ``_hand_out``.
    """

    def __init__(self, key_of: Callable[[str], str], read: ReadFn) -> None:
        self._key_of = key_of
        self._read = read
        self._tails: dict[str, Tail] = {}
        self.failed_reads = 0  # tail reads that failed so far (for tests and metrics)

    @property
    def tailed(self) -> int:
        """Streams the loop reads now (for tests and metrics)."""
        return len(self._tails)

    async def subscribe(self, stream: str, after: str) -> AsyncIterator[StreamEntry]:
        """``Store.subscribe`` through the shared tail: replay, then live, until the terminal marker."""
        last = after
        while True:
            batch = await self._read(stream, last)
            if batch:
                for entry in batch:
                    if entry.terminal:
                        return
                    last = entry.id
                    yield entry
                continue
            reader = await self._join(stream, last)
            if reader is None:
                continue  # the tail is ahead of what we replayed: replay the difference first
            try:
                async for entry in self._live(reader, last):
                    if entry.terminal:
                        return
                    last = entry.id
                    yield entry
            finally:
                self._leave(stream, reader)

    async def _live(self, reader: Reader, last: str) -> AsyncIterator[StreamEntry]:
        seen = parse_stream_id(last)
        while not reader.lagged:
            if not reader.entries:
                reader.ready.clear()
                await reader.ready.wait()
                continue
            entry = reader.entries.popleft()
            reader.waiting_bytes -= len(entry.payload)
            if parse_stream_id(entry.id) > seen:  # the tail may hand over what this reader replayed
                yield entry

    async def _join(self, stream: str, last: str) -> Reader | None:
        tail = self._tails.get(stream)
        if tail is not None and parse_stream_id(last) < parse_stream_id(tail.cursor):
            return None
        reader = Reader()
        if tail is None:
            tail = self._tails[stream] = Tail(last, {reader})
            await self._start(stream, tail, new=True)
        else:
            tail.readers.add(reader)
            await self._start(stream, tail, new=False)
        return reader

    @abc.abstractmethod
    async def _start(self, stream: str, tail: Tail, *, new: bool) -> None:
        """Make sure ``tail`` is being read (``new``: nobody tailed ``stream`` here a moment ago)."""

    def _leave(self, stream: str, reader: Reader) -> None:
        tail = self._tails.get(stream)
        if tail is None:
            return
        tail.readers.discard(reader)
        if not tail.readers:
            del self._tails[stream]  # the next XREAD leaves it out

    def _hand_out(self, tail: Tail, raw: Any) -> None:
        """Give one XREAD batch of a stream (redis-py's raw entries) to each of its readers."""
        got = entries(raw)
        if got:
            tail.cursor = got[-1].id
        size = sum(len(e.payload) for e in got)
        for reader in tail.readers:
            if len(reader.entries) + len(got) > LAG_LIMIT or reader.waiting_bytes + size > LAG_BYTES:
                reader.lagged = True
                reader.entries.clear()
            else:
                reader.entries.extend(got)
                reader.waiting_bytes += size
            reader.ready.set()

    @staticmethod
    def _release(tail: Tail) -> None:
        """Send ``tail``'s readers back to replaying from the store (the reading failed or stops)."""
        for reader in tail.readers:
            reader.lagged = True
            reader.ready.set()

    def _release_all(self) -> None:
        for stream in list(self._tails):
            self._release(self._tails.pop(stream))

    async def close(self) -> None:
        self._release_all()


class StreamFanout(Fanout):
    """Tails streams for every local subscriber through one connection (``redis``, owned here)."""

    def __init__(self, redis: Redis, waker: Redis, key_of: Callable[[str], str], read: ReadFn, wake_key: str,
                 block_ms: int) -> None:
        super().__init__(key_of, read)
        self._redis = redis
        self._waker = waker  # the store's pooled client: the loop's own connection is blocked in XREAD
        self._wake_key = f"{wake_key}:{uuid.uuid4().hex}"
        self._wake_cursor = "$"
        self._block_ms = block_ms
        self._loop: asyncio.Task[None] | None = None

    async def _start(self, stream: str, tail: Tail, *, new: bool) -> None:
        if new:
            await self._wake()  # the loop may be blocked in an XREAD that leaves this stream out
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="stream-fanout")

    async def _wake(self) -> None:
        if self._loop is None or self._loop.done():
            return  # nothing blocked to wake
        with contextlib.suppress(RedisError, OSError):  # the loop picks the stream up within one block anyway
            await self._waker.xadd(self._wake_key, {b"w": b"1"}, maxlen=16, approximate=True)
            await self._waker.pexpire(self._wake_key, WAKE_TTL_MS)

    async def _run(self) -> None:
        failures = 0
        while self._tails:
            keys = {self._key_of(s): (s, t.cursor) for s, t in self._tails.items()}
            request: dict[Any, Any] = {k: cursor for k, (_, cursor) in keys.items()}
            request[self._wake_key] = self._wake_cursor
            try:
                reply = await self._redis.xread(request, count=100, block=self._block_ms)
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                self.failed_reads += 1
                log.warning("fanout.read_failed", error=str(exc), streams=len(keys))
                self._release_all()  # readers replay on their own: they see the error, or the events
                await asyncio.sleep(min(0.05 * 2 ** failures, 1.0))
                continue
            self._deliver(reply, keys)

    def _deliver(self, reply: Any, keys: dict[str, tuple[str, str]]) -> None:
        for key, raw in by_key(reply):
            if key == self._wake_key:
                if raw:
                    self._wake_cursor = text(raw[-1][0])
                continue
            stream = keys.get(key, (None, ""))[0]
            tail = self._tails.get(stream) if stream is not None else None
            if tail is not None:  # else every reader left while we read
                self._hand_out(tail, raw)

    async def close(self) -> None:
        self._release_all()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._loop
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()


def by_key(reply: Any) -> list[tuple[str, Any]]:
    """XREAD's reply as (key, raw entries) pairs, for RESP2 (a list) and RESP3 (a dict) alike."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(text(k), v[0]) for k, v in reply.items()]
    return [(text(k), v) for k, v in reply]
