"""The in-process store's values: items with a deadline, stream entries and streams (Redis-style ids)."""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from philip.store.base import StreamEntry

T = TypeVar("T")
StreamId = tuple[int, int]


@dataclass(slots=True)
class Item(Generic[T]):
    value: T
    expires_at: float | None = None  # time.monotonic() deadline

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(slots=True)
class Entry:
    key: StreamId
    id: str
    payload: bytes
    terminal: bool = False

    def public(self) -> StreamEntry:
        return StreamEntry(self.id, self.payload, self.terminal)


@dataclass(slots=True)
class Stream:
    entries: list[Entry] = field(default_factory=list)
    last: StreamId = (0, 0)
    expires_at: float | None = None

    def append(self, payload: bytes, terminal: bool = False) -> Entry:
        # Redis-style "<ms>-<seq>" ids from the wall clock, forced to increase strictly even if the
        # clock stalls or steps back.
        ms = int(time.time() * 1000)
        key = (ms, 0) if ms > self.last[0] else (self.last[0], self.last[1] + 1)
        self.last = key
        entry = Entry(key, f"{key[0]}-{key[1]}", payload, terminal)
        self.entries.append(entry)
        return entry

    def after(self, after: StreamId, count: int) -> list[Entry]:
        start = bisect.bisect_right(self.entries, after, key=lambda e: e.key)
        return self.entries[start : start + count]


def deadline(ttl_s: float | None) -> float | None:
    return None if ttl_s is None else time.monotonic() + ttl_s


def timeout_s(block_ms: int) -> float | None:
    return None if block_ms == 0 else block_ms / 1000


__all__ = ["Entry", "Item", "Stream", "StreamId", "deadline", "timeout_s"]
