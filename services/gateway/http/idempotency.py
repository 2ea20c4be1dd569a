"""``Idempotency-Key`` for the POSTs that create something: a retry gets the first answer.

The first successful (2xx) answer to a key is kept in the store for 24 h, per tenant and route,
with a hash of the body. The same key and body replay it; another body is 422; a request while
the first is still running is 409 with Retry-After (a lease in the store, so every replica agrees;
short and renewed while the work runs, so a replica killed mid-request frees the key in seconds).
Failed answers are not kept: a retry after an error runs again. Work that is done is answered even when the
store fails after it (the answer is then not kept, and the lease lapses on its own).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable

from starlette.responses import Response

from philip.logs import get_logger
from philip.rpc.auth import current_tenant
from philip.rpc.errors import FailedPrecondition, InvalidArgument, PhilipError
from philip.store import Store, StoreError
from philip.store.lease_renewal import renewed_while_running

log = get_logger("services.gateway.http.idempotency")

IDEMPOTENCY_KIND = "idem"
KEEP_S = 24 * 3600
RUNNING_LEASE_S = 9.0  # renewed every 3 s while the first request runs


class KeyReused(PhilipError):
    """The same Idempotency-Key with another body: HTTP 422."""

    code = "INVALID_ARGUMENT"
    http_status = 422


class Idempotency:
    def __init__(self, store: Store, keep_s: float = KEEP_S, running_lease_s: float = RUNNING_LEASE_S) -> None:
        self.store = store
        self.keep_s = keep_s
        self.running_lease_s = running_lease_s

    async def run(self, key: str | None, route: str, body: bytes,
                  work: Callable[[], Awaitable[Response]]) -> Response:
        if key is None:
            return await work()
        if not 1 <= len(key) <= 128 or not key.isprintable():
            raise InvalidArgument("Idempotency-Key must be 1-128 printable characters", field="Idempotency-Key")
        record_id = self.record_id(route, key)
        body_sha = hashlib.sha256(body).hexdigest()
        holder = uuid.uuid4().hex
        lease = f"idem:{record_id}"
        ttl_s = self.running_lease_s
        if not await self.store.acquire_lease(lease, holder, 1, ttl_s):
            raise FailedPrecondition("a request with this Idempotency-Key is still running; retry in a moment",
                                     field="Idempotency-Key", retry_after_s=1.0)
        try:
            async with renewed_while_running(lambda: self.store.acquire_lease(lease, holder, 1, ttl_s), ttl_s, lease):
                return await self._first_or_kept(record_id, body_sha, work)
        finally:
            try:
                await self.store.release_lease(lease, holder)
            except StoreError as exc:  # Redis is down: the lease lapses within its short life; keep the answer
                log.warning("idempotency.release_failed", lease=lease, error=str(exc))

    @staticmethod
    def record_id(route: str, key: str) -> str:
        """Keys are per tenant and route: the same key on another route or tenant is another request."""
        return hashlib.sha256(f"{current_tenant()}\n{route}\n{key}".encode()).hexdigest()

    async def _first_or_kept(self, record_id: str, body_sha: str,
                             work: Callable[[], Awaitable[Response]]) -> Response:
        kept = await self.store.get_record(IDEMPOTENCY_KIND, record_id)
        if kept is not None:
            if kept["body_sha"] != body_sha:
                raise KeyReused("this Idempotency-Key was used with another body; use a new key for a new "
                                "request", field="Idempotency-Key")
            return Response(kept["body"], status_code=kept["status"], media_type=kept["media_type"],
                            headers={"Idempotency-Replayed": "true"})
        response = await work()
        if 200 <= response.status_code < 300:
            try:
                await self.store.put_record(IDEMPOTENCY_KIND, record_id, {
                    "body_sha": body_sha, "status": response.status_code, "body": bytes(response.body).decode(),
                    "media_type": response.media_type or "application/json"}, ttl_s=self.keep_s)
            except StoreError as exc:  # the work is done: answer it (only a retry of this answer could repeat it)
                log.warning("idempotency.keep_failed", record=record_id, error=str(exc))
        return response


__all__ = ["Idempotency", "KeyReused"]
