"""Who an image belongs to, so one route can serve any image of a tenant's sessions and jobs.

Round images already have an ``simage`` record naming their session. Generation job images and
session finals get an ``imgowner`` record (``{"job_id": ...}`` or ``{"session_id": ...}``) written
beside their blob, with the same TTL; the owning record's tenant decides who may read them.
"""

from __future__ import annotations

from typing import Any

from philip.store import Store

IMAGE_OWNER_KIND = "imgowner"


async def record_owner(store: Store, image_id: str, ttl_s: float, *, session_id: str = "", job_id: str = "") -> None:
    """Note that ``image_id`` belongs to a session or to a generation job."""
    owner = {"session_id": session_id} if session_id else {"job_id": job_id}
    await store.put_record(IMAGE_OWNER_KIND, image_id, owner, ttl_s=ttl_s)


async def owner_of(store: Store, image_id: str) -> dict[str, Any] | None:
    """``{"session_id": ...}`` or ``{"job_id": ...}``, or None for an unknown or expired image."""
    return await store.get_record(IMAGE_OWNER_KIND, image_id)


__all__ = ["IMAGE_OWNER_KIND", "owner_of", "record_owner"]
