"""The storage interface every PHiLIP service talks to.

One async API (``Store``) with two backends: ``MemoryStore`` for tests and single-process runs,
``RedisStore`` for real deployments. Both backends follow Redis semantics, so code tested against
the memory store behaves the same against Redis.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

DEFAULT_PREFIX = "philip:"
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)

# Record kinds that would collide with the other key families ({prefix}blob:..., {prefix}stream:... etc.).
RESERVED_KINDS = frozenset({"blob", "stream", "queue", "idx", "counter", "lease"})

# How long one blocking read waits inside ``subscribe`` before looping; bounded so a subscriber
# never holds a connection past the socket timeout.
SUBSCRIBE_BLOCK_MS = 1_000


class StoreError(Exception):
    """Base class of every error the store raises (backend exceptions never leak)."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached (connection refused, timed out, closed) or cannot take writes for now
    (a replica after a failover, out of memory, loading); ``retry_after_s`` is when trying again makes sense."""

    def __init__(self, message: str, retry_after_s: float | None = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RecordNotFound(StoreError, KeyError):
    """``update_record`` was called for a record that does not exist (or has expired)."""

    def __init__(self, kind: str, record_id: str) -> None:
        super().__init__(f"no {kind} record with id {record_id!r}")
        self.kind = kind
        self.record_id = record_id

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; keep it readable.
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of an event stream or work queue.

    ``id`` is a Redis-style stream id ("<ms>-<seq>"); ids increase strictly within a stream.
    ``terminal`` is True only for the end-of-stream marker written by ``close_stream``.
    """

    id: str
    payload: bytes
    terminal: bool = False


def parse_stream_id(entry_id: str) -> tuple[int, int]:
    """Parse "<ms>-<seq>" (or a bare "<ms>", meaning seq 0) into a comparable tuple."""
    match = _STREAM_ID.fullmatch(entry_id)
    parsed = (int(match[1]), int(match[2] or 0)) if match else (-1, -1)
    if not (0 <= parsed[0] < 2**64 and 0 <= parsed[1] < 2**64):  # Redis ids are two unsigned 64-bit parts
        raise ValueError(f"invalid stream id {entry_id!r}")
    return parsed


def check_kind(kind: str) -> None:
    """Reject record kinds that would make keys ambiguous."""
    if not kind or ":" in kind or kind in RESERVED_KINDS:
        raise ValueError(f"invalid record kind {kind!r} (non-empty, no ':', not one of {sorted(RESERVED_KINDS)})")


def holds(record: Mapping[str, Any], expect: Mapping[str, Collection[Any]]) -> bool:
    """Whether each field named in ``expect`` holds one of its allowed values (a missing field is None)."""
    return all(record.get(name) in allowed for name, allowed in expect.items())


def check_ttl(ttl_s: float | None) -> None:
    """TTLs are positive seconds; None means "never expires"."""
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")


class Store(abc.ABC):
    """Async key/value, event-stream and work-queue storage.

    All keys live under ``prefix`` (default "philip:"). Every method may raise ``StoreUnavailable``
    when the backend is unreachable; other backend failures surface as ``StoreError``.
    """

    prefix: str

    # ---- records -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> None:
        """Store (replace) a JSON-serialisable record; with ``ttl_s`` it expires after that many seconds.

        Raises TypeError if ``data`` is not JSON-serialisable, ValueError for a reserved/invalid kind.
        """

    @abc.abstractmethod
    async def create_record(self, kind: str, record_id: str, data: dict[str, Any], ttl_s: float | None = None) -> bool:
        """Store the record only if none exists (one atomic step across replicas); False when one does."""

    @abc.abstractmethod
    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        """Return a fresh copy of the record, or None if it is absent or expired."""

    async def update_record(self, kind: str, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Atomically shallow-merge ``fields`` into the record and return the merged record.

        The record's remaining TTL is kept. Raises RecordNotFound if it is absent or expired.
        """
        merged = await self.update_record_if(kind, record_id, fields, {})
        assert merged is not None  # nothing expected, so nothing can differ
        return merged

    @abc.abstractmethod
    async def update_record_if(self, kind: str, record_id: str, fields: dict[str, Any],
                               expect: Mapping[str, Collection[Any]]) -> dict[str, Any] | None:
        """As :meth:`update_record`, but only if each field named in ``expect`` now holds one of its
        values (one compare-and-set across replicas); None, and nothing changed, otherwise."""

    @abc.abstractmethod
    async def refresh_ttl(self, ttl_s: float, *, records: Sequence[tuple[str, str]] = (), blobs: Sequence[str] = (),
                          streams: Sequence[str] = ()) -> None:
        """Make each named (kind, id) record, blob and stream that exists expire ``ttl_s`` from now."""

    @abc.abstractmethod
    async def delete_record(self, kind: str, record_id: str) -> bool:
        """Delete the record; True if it existed."""

    @abc.abstractmethod
    async def list_records(self, kind: str) -> list[str]:
        """Return the sorted ids of the live (not expired) records of ``kind``."""

    # ---- blobs ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_blob(self, blob_id: str, data: bytes, ttl_s: float) -> None:
        """Store opaque bytes (e.g. an encoded image) that expire after ``ttl_s`` seconds."""

    @abc.abstractmethod
    async def get_blob(self, blob_id: str) -> bytes | None:
        """Return the blob, or None if it is absent or expired."""

    # ---- event streams -------------------------------------------------------------------------

    @abc.abstractmethod
    async def append_event(self, stream: str, payload: bytes, maxlen: int = 10_000) -> str:
        """Append an event and return its id.

        The stream is trimmed so it keeps at least the ``maxlen`` most recent entries (trimming may be
        approximate, as with Redis ``MAXLEN ~``).
        """

    @abc.abstractmethod
    async def read_events(
        self, stream: str, after: str = "0-0", count: int = 100, block_ms: int | None = None
    ) -> list[StreamEntry]:
        """Return up to ``count`` entries with ids strictly greater than ``after``, oldest first.

        With ``block_ms`` and nothing to return yet, wait up to that many milliseconds for an entry
        (0 waits indefinitely, as in Redis). The terminal marker is returned with ``terminal=True``.
        """

    @abc.abstractmethod
    async def read_events_before(self, stream: str, before: str | None = None, count: int = 100) -> list[StreamEntry]:
        """Return up to ``count`` entries with ids strictly smaller than ``before`` (None: the newest),
        newest first; the terminal marker is left out. For paging back through a log."""

    @abc.abstractmethod
    async def trim_events_before(self, stream: str, before_ms: int) -> int:
        """Drop the entries older than ``before_ms`` (epoch milliseconds, the first part of an id);
        returns how many went. Retention by age, where ``maxlen`` is retention by count."""

    @abc.abstractmethod
    async def delete_events(self, stream: str, ids: Sequence[str]) -> int:
        """Remove the entries ``ids`` (e.g. superseded previews); returns how many existed. Later ids
        still increase past them, so a reader resuming after a removed id misses nothing else."""

    @abc.abstractmethod
    async def close_stream(self, stream: str) -> str:
        """Append the terminal marker so that subscribers finish; returns the marker's id."""

    @abc.abstractmethod
    async def expire_stream(self, stream: str, ttl_s: float) -> bool:
        """Delete the whole stream after ``ttl_s`` seconds; False if the stream does not exist."""

    async def subscribe(self, stream: str, after: str = "0-0") -> AsyncIterator[StreamEntry]:
        """Yield every entry after ``after`` (replay), then tail new ones until the terminal marker.

        The marker itself is not yielded. A stream that is never closed is tailed forever, so wrap
        the iteration in a timeout where that matters.
        """
        last = after
        while True:
            batch = await self.read_events(stream, after=last, count=100, block_ms=SUBSCRIBE_BLOCK_MS)
            for entry in batch:
                if entry.terminal:
                    return
                last = entry.id
                yield entry

    # ---- work queue ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(self, queue: str, payload: bytes) -> str:
        """Durably append a work item and return its id (never trimmed)."""

    @abc.abstractmethod
    async def claim(
        self, queue: str, group: str, consumer: str, count: int = 1, block_ms: int | None = None
    ) -> list[StreamEntry]:
        """Deliver work items to ``consumer`` within consumer group ``group``.

        If the consumer still has unacknowledged items (e.g. it restarted mid-job) those are
        returned first, oldest first, and no new ones. Otherwise up to ``count`` items never
        delivered to the group are returned; with ``block_ms`` it waits up to that long for one
        (0 = indefinitely). The group is created on first use and sees items enqueued before it.
        """

    @abc.abstractmethod
    async def ack(self, queue: str, group: str, entry_id: str) -> bool:
        """Mark an item as done for ``group``; True if it was pending."""

    @abc.abstractmethod
    async def reclaim(
        self, queue: str, group: str, consumer: str, min_idle_ms: int, count: int = 10
    ) -> list[StreamEntry]:
        """Take over up to ``count`` pending items idle for at least ``min_idle_ms`` (e.g. of a dead consumer).

        Claimed items now belong to ``consumer`` and their idle time restarts.
        """

    @abc.abstractmethod
    async def touch(self, queue: str, group: str, consumer: str, entry_id: str) -> bool:
        """Heartbeat: reset the idle time of a pending item ``consumer`` is working on, so ``reclaim``
        does not hand a long job to another worker. False if the item is not pending (acked, or
        never delivered) or belongs to another consumer now."""

    @abc.abstractmethod
    async def pending_count(self, queue: str, group: str) -> int:
        """Number of items delivered to ``group`` but not yet acknowledged (0 for an unknown group)."""

    # ---- leases (quotas) -----------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire_lease(self, key: str, holder: str, limit: int, ttl_s: float) -> bool:
        """Take one of ``limit`` slots of ``key`` for ``holder`` for ``ttl_s`` seconds, atomically.

        Expired leases are dropped first. A holder that has a slot already renews it (True even at
        the limit). False when ``limit`` other holders hold one: nothing changes then.
        """

    @abc.abstractmethod
    async def release_lease(self, key: str, holder: str) -> bool:
        """Give ``holder``'s slot back; True if it held one."""

    @abc.abstractmethod
    async def count_leases(self, key: str) -> int:
        """Slots of ``key`` held now (expired ones not counted)."""

    # ---- helpers -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        """Add ``by`` to a counter (created at 0) and return the new value.

        ``ttl_s`` is applied only when the counter has no TTL yet (i.e. on creation), so it
        defines a fixed window, e.g. for rate limiting.
        """

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True if the backend answers; False (never an exception) if it is unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
