"""The per-tenant activity log: appended per tenant, paged newest first, trimmed by age."""

from __future__ import annotations

import time

import pytest

from philip.activity import ActivityLog
from philip.rpc.auth import acting_as
from philip.rpc.errors import InvalidArgument
from philip.store import MemoryStore, StoreUnavailable


async def test_pages_run_newest_first_without_gaps_or_repeats() -> None:
    log = ActivityLog(MemoryStore())
    for i in range(7):
        await log.record("session.started", f"ses_{i}", tenant="acme", prompt=f"p{i}")
    await log.record("session.started", "ses_other", tenant="globex")
    seen, token = [], ""
    while True:
        entries, token = await log.page(3, token, tenant="acme")
        seen += entries
        if not token:
            break
    assert [e.subject_id for e in seen] == [f"ses_{i}" for i in reversed(range(7))]
    assert seen[0].details == {"prompt": "p6"} and seen[0].kind == "session.started"
    assert [e.subject_id for e in (await log.page(tenant="globex"))[0]] == ["ses_other"]
    assert (await log.page(tenant="initech")) == ([], "")


async def test_details_are_strings_and_the_callers_tenant_is_the_default() -> None:
    log = ActivityLog(MemoryStore())
    with acting_as("acme"):
        await log.record("session.feedback", "ses_1", round=2, liked=["a", "b"], disliked=[])
        entries, _ = await log.page()
    assert entries[0].details == {"round": "2", "liked": "a,b", "disliked": ""}
    assert (await log.page(tenant="globex"))[0] == []


async def test_bad_paging_arguments_are_invalid() -> None:
    log = ActivityLog(MemoryStore())
    with pytest.raises(InvalidArgument) as size:
        await log.page(101)
    assert size.value.field == "page_size"
    with pytest.raises(InvalidArgument) as token:
        await log.page(10, "not-a-token")
    assert token.value.field == "page_token"


async def test_entries_older_than_the_retention_are_dropped() -> None:
    store = MemoryStore()
    log = ActivityLog(store, retention_s=0.2)
    await log.record("session.started", "old", tenant="acme")
    time.sleep(0.25)
    assert (await log.page(tenant="acme"))[0] == []  # past retention: not shown even before a trim
    await log.record("session.started", "new", tenant="acme")  # appending trims the old one
    assert [e.subject_id for e in (await log.page(tenant="acme"))[0]] == ["new"]
    assert len(await store.read_events("activity:acme")) == 1


async def test_a_store_failure_never_fails_the_action_it_records() -> None:
    class Down(MemoryStore):
        async def append_event(self, stream: str, payload: bytes, maxlen: int = 10_000) -> str:
            raise StoreUnavailable("redis down")

    await ActivityLog(Down()).record("session.started", "ses_1", tenant="acme")  # logged, not raised
