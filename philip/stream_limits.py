"""Open event streams per process and per tenant (PHILIP_MAX_STREAMS, PHILIP_MAX_STREAMS_PER_TENANT).

Every open stream (a gRPC Session/Subscribe/WatchJob, an SSE response) holds a slot from before its
first event until it ends; one past a bound is refused at once with RESOURCE_EXHAUSTED (HTTP 429)
and a retry delay, instead of costing the process memory and its store connections.
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType

from philip import metrics
from philip.rpc.errors import ResourceExhausted

RETRY_AFTER_S = 5.0


class StreamSlot:
    """One held stream; :meth:`release` (or leaving the ``with`` block) gives it back, once."""

    def __init__(self, limits: StreamLimits, tenant: str) -> None:
        self._limits = limits
        self.tenant = tenant
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits._give_back(self.tenant)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class StreamLimits:
    """Counts the streams this process has open, in all and per tenant ("" is an open gateway's callers)."""

    def __init__(self, max_streams: int = 1000, max_per_tenant: int = 200) -> None:
        self.max_streams = max_streams
        self.max_per_tenant = max_per_tenant
        self.open = 0
        self._by_tenant: Counter[str] = Counter()

    def take(self, tenant: str) -> StreamSlot:
        """A slot for one more stream of ``tenant``, or ResourceExhausted when a bound is reached."""
        if self.open >= self.max_streams:
            raise ResourceExhausted(
                f"this gateway has {self.max_streams} streams open (PHILIP_MAX_STREAMS); "
                f"retry in {RETRY_AFTER_S:.0f} s or close a stream you no longer read", retry_after_s=RETRY_AFTER_S)
        if tenant and self._by_tenant[tenant] >= self.max_per_tenant:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {self.max_per_tenant} streams open on this gateway "
                f"(PHILIP_MAX_STREAMS_PER_TENANT); close one you no longer read, or retry in {RETRY_AFTER_S:.0f} s",
                retry_after_s=RETRY_AFTER_S)
        self.open += 1
        self._by_tenant[tenant] += 1
        metrics.STREAMS_OPEN.set(self.open)
        return StreamSlot(self, tenant)

    def _give_back(self, tenant: str) -> None:
        self.open -= 1
        self._by_tenant[tenant] -= 1
        if self._by_tenant[tenant] <= 0:
            del self._by_tenant[tenant]
        metrics.STREAMS_OPEN.set(self.open)


__all__ = ["RETRY_AFTER_S", "StreamLimits", "StreamSlot"]
