"""Per-tenant quotas: open sessions, generations in flight, training jobs.

Each quota is a set of leases in the store (``lease:quota:{name}:{tenant}``), so every gateway and
personalizer replica counts the same slots. A slot is taken when work is accepted and given back
when it ends; a lease its holder stopped renewing (a crashed replica) expires, so slots never leak
for long. A refusal is RESOURCE_EXHAUSTED with a RetryInfo delay. Calls without a tenant (an open
gateway, for development) have no quota.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from philip import metrics
from philip.logs import get_logger
from philip.rpc.auth import current_tenant
from philip.rpc.errors import ResourceExhausted
from philip.settings import Settings
from philip.store import Store, StoreError
from philip.store.lease_renewal import renewed_while_running

log = get_logger("philip.quotas")


@dataclass(frozen=True, slots=True)
class Quota:
    """One kind of limited thing, and what a refused caller should do."""

    name: str
    what: str  # "open sessions"
    advice: str  # "finalize or cancel one"
    retry_after_s: float


SESSIONS = Quota("sessions", "open sessions", "finalize or cancel one", 30.0)
GENERATIONS = Quota("generations", "generations queued or running", "wait for one to finish", 2.0)
TRAINING_JOBS = Quota("training_jobs", "training jobs queued or running", "wait for one to end or cancel one", 60.0)


class Quotas:
    """The limits of every tenant, enforced through the store's leases (limit 0: unlimited)."""

    def __init__(self, store: Store, limits: dict[str, int]) -> None:
        self.store = store
        self.limits = limits

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Quotas:
        q = settings.quotas
        return cls(store, {SESSIONS.name: q.quota_sessions, GENERATIONS.name: q.quota_generations,
                           TRAINING_JOBS.name: q.quota_training_jobs})

    @staticmethod
    def _key(quota: Quota, tenant: str) -> str:
        return f"quota:{quota.name}:{tenant}"

    def _limit(self, quota: Quota, tenant: str) -> int:
        """The tenant's limit; 0 when nothing is limited (no tenant, or the quota is off)."""
        return self.limits.get(quota.name, 0) if tenant else 0

    async def acquire(self, quota: Quota, holder: str, ttl_s: float, tenant: str | None = None) -> None:
        """Take (or renew) ``holder``'s slot for ``ttl_s``; ResourceExhausted when the tenant has none left."""
        tenant = current_tenant() if tenant is None else tenant
        limit = self._limit(quota, tenant)
        if limit <= 0:
            return
        if not await self.store.acquire_lease(self._key(quota, tenant), holder, limit, ttl_s):
            metrics.QUOTA_REJECTED.labels(quota.name).inc()
            log.info("quota.refused", quota=quota.name, tenant=tenant, limit=limit, holder=holder)
            raise ResourceExhausted(
                f"tenant {tenant!r} already has {limit} {quota.what}, its quota; {quota.advice}, "
                f"or retry in {quota.retry_after_s:.0f} s", retry_after_s=quota.retry_after_s)

    async def release(self, quota: Quota, holder: str, tenant: str | None = None) -> None:
        """Give the slot back. Never raises: a slot that could not be released expires with its lease."""
        tenant = current_tenant() if tenant is None else tenant
        if self._limit(quota, tenant) <= 0:
            return
        try:
            await self.store.release_lease(self._key(quota, tenant), holder)
        except StoreError as exc:
            log.warning("quota.release_failed", quota=quota.name, holder=holder, error=str(exc))

    async def in_use(self, quota: Quota, tenant: str) -> int:
        return await self.store.count_leases(self._key(quota, tenant))

    @contextlib.asynccontextmanager
    async def hold(self, quota: Quota, holder: str, ttl_s: float = 30.0) -> AsyncIterator[None]:
        """A slot for the duration of the block, renewed while it runs (a short lease, so a crashed
        holder's slot comes back within ``ttl_s``)."""
        tenant = current_tenant()
        if self._limit(quota, tenant) <= 0:
            yield
            return
        await self.acquire(quota, holder, ttl_s, tenant)

        async def renew() -> None:
            try:
                await self.acquire(quota, holder, ttl_s, tenant)
            except ResourceExhausted as exc:  # the lease lapsed in a blip and others took it: the work goes on
                log.warning("quota.renew_failed", quota=quota.name, holder=holder, error=str(exc))

        try:
            async with renewed_while_running(renew, ttl_s, f"quota:{quota.name}"):
                yield
        finally:
            await self.release(quota, holder, tenant)


__all__ = ["GENERATIONS", "SESSIONS", "TRAINING_JOBS", "Quota", "Quotas"]
