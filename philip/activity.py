"""Every tenant's activity log: the stream ``activity:{tenant}`` in the store.

Sessions (started, feedback, finalized, cancelled), training jobs (created, succeeded, failed,
cancelled) and adapter deletions are appended as they happen, by whichever replica did them;
entries older than ``retention_s`` are trimmed on append and at most ``max_entries`` are kept.
ListActivity reads it newest first, a page at a time. Recording never fails the action it
records: a store error is logged and the action goes on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from philip.logs import get_logger
from philip.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, check_page
from philip.rpc.auth import current_tenant
from philip.settings import Settings
from philip.store import Store, StoreError
from philip.store.base import parse_stream_id

log = get_logger("philip.activity")

OPEN_TENANT = "-"  # the stream of an open gateway's calls (tenant ""); tenant names cannot be "-"


@dataclass(frozen=True, slots=True)
class Activity:
    """One entry: what happened (``kind``), to what (``subject_id``), when, and details."""

    id: str
    at_ms: int
    kind: str
    subject_id: str
    details: dict[str, str] = field(default_factory=dict)


def activity_stream(tenant: str) -> str:
    return f"activity:{tenant or OPEN_TENANT}"


class ActivityLog:
    """Appends to and pages through the per-tenant activity streams."""

    def __init__(self, store: Store, *, retention_s: float = 30 * 86_400.0, max_entries: int = 10_000) -> None:
        self.store = store
        self.retention_s = retention_s
        self.max_entries = max_entries

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> ActivityLog:
        return cls(store, retention_s=settings.quotas.activity_retention_days * 86_400,
                   max_entries=settings.quotas.activity_max_entries)

    async def record(self, kind: str, subject_id: str, *, tenant: str | None = None, **details: Any) -> None:
        """Append an entry for ``tenant`` (default: the caller's); details are kept as strings."""
        tenant = current_tenant() if tenant is None else tenant
        body = {"kind": kind, "subject": subject_id, "details": {k: _text(v) for k, v in details.items()}}
        stream = activity_stream(tenant)
        try:
            await self.store.append_event(stream, json.dumps(body).encode(), maxlen=self.max_entries)
            await self.store.trim_events_before(stream, int((time.time() - self.retention_s) * 1000))
        except StoreError as exc:
            log.warning("activity.record_failed", kind=kind, subject_id=subject_id, error=str(exc))

    async def page(self, page_size: int = 0, page_token: str = "",
                   tenant: str | None = None) -> tuple[list[Activity], str]:
        """Up to ``page_size`` entries older than ``page_token`` (newest first) and the next token."""
        size = check_page(page_size, page_token, "ListActivity")
        tenant = current_tenant() if tenant is None else tenant
        # One more than asked, to know whether an older page exists.
        found = await self.store.read_events_before(activity_stream(tenant), page_token or None, size + 1)
        cutoff_ms = (time.time() - self.retention_s) * 1000
        entries = [_decode(e.id, e.payload) for e in found[:size] if parse_stream_id(e.id)[0] >= cutoff_ms]
        more = len(found) > size and len(entries) == size
        return entries, entries[-1].id if more else ""


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _decode(entry_id: str, payload: bytes) -> Activity:
    body = json.loads(payload)
    return Activity(entry_id, parse_stream_id(entry_id)[0], body["kind"], body["subject"], body["details"])


__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Activity", "ActivityLog", "activity_stream"]
