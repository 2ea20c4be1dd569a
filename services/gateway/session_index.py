"""Each tenant's sessions, newest first: the stream ``sessions:{tenant}`` of session ids.

``SessionManager.start`` appends the new id; ``ListSessions`` (gRPC and HTTP) pages through it and
summarises each session from its record. Sessions whose record has expired simply drop out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from philip.activity import OPEN_TENANT
from philip.logs import get_logger
from philip.paging import check_page
from philip.rpc.auth import current_tenant
from philip.store import Store, StoreError
from services.gateway.session_events import Phase
from services.gateway.session_record import SessionRecord
from services.gateway.session_store import SESSION_KIND

log = get_logger("services.gateway.session_index")

MAX_INDEXED = 10_000  # per tenant; older ids are trimmed (their sessions expired long before)


def sessions_stream(tenant: str) -> str:
    return f"sessions:{tenant or OPEN_TENANT}"


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """What a gallery shows of a session."""

    session_id: str
    phase: Phase
    prompt: str
    created_ms: int
    rounds: int
    cover_image_id: str
    final_image_id: str


class SessionIndex:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, session_id: str) -> None:
        """Index a new session of the caller's tenant (a store error is logged: the session goes on)."""
        try:
            await self.store.append_event(sessions_stream(current_tenant()), session_id.encode(), maxlen=MAX_INDEXED)
        except StoreError as exc:
            log.warning("session_index.add_failed", session_id=session_id, error=str(exc))

    async def page(self, page_size: int = 0, page_token: str = "") -> tuple[list[SessionSummary], str]:
        """Up to ``page_size`` of the caller's sessions older than ``page_token``, and the next token."""
        size = check_page(page_size, page_token, "ListSessions")
        found = await self.store.read_events_before(sessions_stream(current_tenant()), page_token or None, size + 1)
        summaries = []
        for entry in found[:size]:
            record = await self.store.get_record(SESSION_KIND, entry.payload.decode())
            if record is not None:
                summaries.append(summarise(entry.payload.decode(), record))
        more = len(found) > size
        return summaries, found[size - 1].id if more else ""


def summarise(session_id: str, stored: dict[str, Any]) -> SessionSummary:
    record = SessionRecord.from_record(stored)
    final = record.final.image_id if record.final else ""
    last_images = record.rounds[-1].image_ids if record.rounds else ()
    return SessionSummary(session_id, record.phase, record.params["prompt"], record.created_ms, len(record.rounds),
                          final or (last_images[0] if last_images else ""), final)


__all__ = ["SessionIndex", "SessionSummary", "sessions_stream"]
