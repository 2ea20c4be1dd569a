"""Riding out a store outage (a Redis restart, a failover): retries with jittered exponential backoff, bounded
in each delay and, where the caller says so, in total time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from philip.logs import get_logger
from philip.store import StoreUnavailable

T = TypeVar("T")
log = get_logger("services.personalizer.retrying")


class Backoff:
    """Delays ``base``, 2·``base``, 4·``base``, ... up to ``cap``, each times a random factor in [0.5, 1.5):
    the workers that lost the store at the same moment do not all come back to it in lockstep."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, max(base, cap)
        self._next = base

    def next(self) -> float:
        delay = self._next * random.uniform(0.5, 1.5)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.base


async def retrying(call: Callable[[], Awaitable[T]], *, what: str, backoff: Backoff, give_up_s: float | None,
                   stop: asyncio.Event | None = None) -> T:
    """``await call()``, retried while it raises StoreUnavailable; re-raises once the store has failed for
    ``give_up_s`` (None: no limit) or once ``stop`` is set. Each retry is logged with what it was for."""
    failing_since: float | None = None
    while True:
        try:
            result = await call()
        except StoreUnavailable as exc:
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            down_s = now - failing_since
            if (give_up_s is not None and down_s >= give_up_s) or (stop is not None and stop.is_set()):
                raise
            delay = backoff.next()
            if give_up_s is not None:  # one last try right at the limit rather than a sleep past it
                delay = max(0.05, min(delay, give_up_s - down_s))
            log.warning("store.retry", what=what, down_s=round(down_s, 1), retry_in_s=round(delay, 2), error=str(exc))
            await _sleep(delay, stop)
        else:
            if failing_since is not None:
                log.info("store.recovered", what=what, down_s=round(time.monotonic() - failing_since, 1))
            return result


async def _sleep(delay: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):  # a shutdown cuts the wait short
        await asyncio.wait_for(stop.wait(), delay)
