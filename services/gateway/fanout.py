"""Per-subscriber buffering: a slow reader never holds up the stream or other readers.

Each subscriber reads the store stream through its own bounded buffer, filled by its own task.
When the buffer is full the oldest droppable event (a preview or progress tick, which a newer
one supersedes) is discarded; events that are not droppable (round images, finals, errors) are
never discarded: the filler waits for the reader instead, which only delays this reader's copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_BUFFER = 16


class SubscriberBuffer(Generic[T]):
    """A bounded FIFO that drops the oldest droppable item instead of growing past ``maxsize``."""

    def __init__(self, maxsize: int, droppable: Callable[[T], bool]) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.droppable = droppable
        self.dropped = 0
        self._items: deque[T] = deque()
        self._changed = asyncio.Condition()
        self._closed = False

    async def put(self, item: T) -> None:
        async with self._changed:
            while len(self._items) >= self.maxsize:
                victim = next((i for i, old in enumerate(self._items) if self.droppable(old)), None)
                if victim is not None:
                    del self._items[victim]
                    self.dropped += 1
                    break
                await self._changed.wait()
            self._items.append(item)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def get(self) -> tuple[bool, T | None]:
        """(True, item), or (False, None) once closed and drained."""
        async with self._changed:
            while not self._items and not self._closed:
                await self._changed.wait()
            if not self._items:
                return False, None
            item = self._items.popleft()
            self._changed.notify_all()
            return True, item


async def buffered(source: AsyncIterator[T], droppable: Callable[[T], bool],
                   maxsize: int = DEFAULT_BUFFER) -> AsyncIterator[T]:
    """Yield ``source``'s items through a :class:`SubscriberBuffer` filled by a task of its own.

    Errors of ``source`` are re-raised to the reader after the items before them.
    """
    buffer: SubscriberBuffer[T] = SubscriberBuffer(maxsize, droppable)
    failure: list[BaseException] = []

    async def fill() -> None:
        try:
            async for item in source:
                await buffer.put(item)
        except Exception as exc:
            failure.append(exc)
        finally:
            await buffer.close()

    task = asyncio.get_running_loop().create_task(fill(), name="subscriber-fill")
    try:
        while True:
            ok, item = await buffer.get()
            if not ok:
                break
            yield item  # type: ignore[misc]
        if failure:
            raise failure[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
