"""Keep a store lease alive while work runs: a short lease renewed every third of its life, so a
holder that dies (a SIGKILLed replica) frees its slot within ``ttl_s`` instead of holding it for
as long as the longest piece of work could take."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from philip.logs import get_logger
from philip.store.base import StoreError

log = get_logger("philip.store.leases")


@contextlib.asynccontextmanager
async def renewed_while_running(renew: Callable[[], Awaitable[object]], ttl_s: float,
                                what: str) -> AsyncIterator[None]:
    """Call ``renew`` every ``ttl_s / 3`` seconds until the block ends; a failed renewal (Redis
    blipped) is logged and tried again at the next tick, never raised into the work."""

    async def renewing() -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                await renew()
            except StoreError as exc:
                log.warning("lease.renew_failed", lease=what, error=str(exc))

    task = asyncio.create_task(renewing())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["renewed_while_running"]
