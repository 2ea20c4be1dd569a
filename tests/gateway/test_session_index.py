# ruff: noqa: F811  (the session fixtures are imported from test_sessions and taken as arguments)
"""The gallery's session index and the image lookup, on the session domain without a socket.

Each tenant lists only its own sessions, newest first, page by page; an image is served only to the
tenant whose session (or generation job) made it.
"""

from __future__ import annotations

import asyncio

import pytest

from philip.generation.jobs import JOB_KIND
from philip.generation.requests import GenerationParams
from philip.image_owners import record_owner
from philip.rpc.auth import acting_as
from philip.rpc.errors import InvalidArgument, NotFound
from services.gateway.images import image_png
from services.gateway.session_events import Phase
from services.gateway.sessions import SessionManager
from tests.gateway.test_sessions import _round_done, manager, store, upstream  # noqa: F401  (fixtures)


async def _start(manager: SessionManager, prompt: str) -> str:
    session_id = await manager.start(GenerationParams(prompt=prompt, num_images=2, seed=10), {})
    await _round_done(manager, session_id, 1)
    return session_id


async def test_each_tenant_pages_through_its_own_sessions_newest_first(manager: SessionManager) -> None:
    with acting_as("acme"):
        acme = [await _start(manager, f"acme {i}") for i in range(5)]
    with acting_as("globex"):
        globex = await _start(manager, "globex 0")
        only, token = await manager.index.page()
        assert [s.session_id for s in only] == [globex] and token == ""
    with acting_as("acme"):
        first, token = await manager.index.page(page_size=2)
        second, token2 = await manager.index.page(page_size=2, page_token=token)
        third, token3 = await manager.index.page(page_size=2, page_token=token2)
    listed = [s.session_id for s in [*first, *second, *third]]
    assert listed == acme[::-1] and token3 == ""
    newest = first[0]
    assert newest.prompt == "acme 4" and newest.rounds == 1 and newest.phase is Phase.AWAITING_FEEDBACK
    snapshot = await manager.snapshot(newest.session_id)
    assert newest.cover_image_id == snapshot.rounds[-1].images[0].image_id and newest.final_image_id == ""


async def test_bad_page_arguments_name_the_field(manager: SessionManager) -> None:
    for size, token, field in ((101, "", "page_size"), (-1, "", "page_size"), (0, "not-a-token", "page_token")):
        with pytest.raises(InvalidArgument) as caught:
            await manager.index.page(size, token)
        assert caught.value.field == field
    with pytest.raises(InvalidArgument, match="one ListSessions gave out"):
        await manager.index.page(0, "x")


async def test_images_are_served_to_their_own_tenant_only(manager: SessionManager) -> None:
    with acting_as("acme"):
        session_id = await _start(manager, "acme's")
        image_id = (await manager.snapshot(session_id)).rounds[0].images[0].image_id
        png = await image_png(manager.store, image_id)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        # A generation job's image: its owner record names the job, whose record names the tenant.
        await manager.store.put_record(JOB_KIND, "job_1", {"tenant": "acme"}, ttl_s=60)
        await manager.store.put_blob("img_job1", b"\x89PNG-job", 60)
        await record_owner(manager.store, "img_job1", 60, job_id="job_1")
        assert await image_png(manager.store, "img_job1") == b"\x89PNG-job"
    with acting_as("globex"):
        for other in (image_id, "img_job1"):
            with pytest.raises(NotFound):
                await image_png(manager.store, other)
    with pytest.raises(NotFound):
        await image_png(manager.store, "img_unknown")
    with pytest.raises(InvalidArgument):
        await image_png(manager.store, "../etc/passwd")


async def test_a_store_failure_while_indexing_does_not_fail_the_session(manager: SessionManager,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from philip.store import StoreError

    async def broken(*args: object, **kwargs: object) -> str:
        raise StoreError("down")

    real = manager.store.append_event
    calls = 0

    async def append(stream: str, payload: bytes, maxlen: int = 10_000) -> str:
        nonlocal calls
        if stream.startswith("sessions:"):
            calls += 1
            return await broken()
        return await real(stream, payload, maxlen)

    monkeypatch.setattr(manager.store, "append_event", append)
    session_id = await _start(manager, "indexed or not")
    await asyncio.sleep(0)
    assert calls == 1 and (await manager.snapshot(session_id)).rounds
