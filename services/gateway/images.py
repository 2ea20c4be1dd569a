"""Any image of the caller's sessions and generation jobs, by id (the HTTP edge's PNG route)."""

from __future__ import annotations

import re

from philip.generation.jobs import JOB_KIND
from philip.image_owners import owner_of
from philip.rpc.auth import owned_by_caller
from philip.rpc.errors import InvalidArgument, NotFound
from philip.store import Store
from services.gateway.session_store import IMAGE_KIND, SESSION_KIND

_IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


async def image_png(store: Store, image_id: str) -> bytes:
    """The PNG of ``image_id``; NotFound for unknown or expired images and for another tenant's."""
    if not _IMAGE_ID.match(image_id):
        raise InvalidArgument("an image id is 1-128 letters, digits, '_' or '-'", field="image_id")
    owner = await store.get_record(IMAGE_KIND, image_id) or await owner_of(store, image_id) or {}
    if owner.get("session_id"):
        record = await store.get_record(SESSION_KIND, owner["session_id"])
    elif owner.get("job_id"):
        record = await store.get_record(JOB_KIND, owner["job_id"])
    else:
        record = None
    png = await store.get_blob(image_id) if record is not None and owned_by_caller(record) else None
    if png is None:
        raise NotFound(f"no image {image_id!r} (unknown or expired)", field="image_id")
    return png


__all__ = ["image_png"]
