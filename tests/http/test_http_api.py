"""The HTTP/JSON + SSE edge end to end (docs/HTTP.md): `serve("all")` on Redis with the shipped model,
an open gateway (no API keys), httpx over a real socket.

A whole session by HTTP only; SSE resume by Last-Event-ID; a slow SSE reader that does not slow the
session; Idempotency-Key replays; the OpenAPI document against the route table. The server is the
package's (conftest.py), shared with test_http_fuzz.py.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import socket
import time
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from grpc import aio
from openapi_spec_validator import validate

from philip.store.base import parse_stream_id
from philip.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.http.api import EdgeState
from services.gateway.http.app import build_app
from services.gateway.http.openapi import document
from tests.http import fuzzing
from tests.http.support import (
    BAD_REQUEST,
    Served,
    Stream,
    assert_status_body,
    detail,
    frames,
    image_ids,
    png_size,
    read_events,
    start_session,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="package")]  # the server of conftest.py


def start_body(prompt: str = "a red circle on a blue background", **params: Any) -> dict[str, Any]:
    return {"params": {"prompt": prompt, "numImages": 2, "steps": 3, "seed": 11, **params}}


# ---- 1. a whole session ------------------------------------------------------------------------------


async def test_a_whole_session_by_http_only(served: Served) -> None:
    async with served.client() as http:
        created = await http.post("/v1/sessions", json=start_body(previewEvery=1))
        assert created.status_code == 201, created.text
        snapshot = created.json()
        served.validate(snapshot, "philip.v1.SessionSnapshot")
        session_id = snapshot["sessionId"]
        assert session_id.startswith("ses_") and created.headers["location"] == f"/v1/sessions/{session_id}"
        assert snapshot["phase"] == "SESSION_PHASE_GENERATING" and snapshot["runningRound"] == 1
        assert snapshot["params"]["prompt"] == "a red circle on a blue background"
        assert snapshot["params"]["numImages"] == 2 and snapshot["params"]["steps"] == 3
        assert snapshot["rounds"] == [] and "final" not in snapshot  # unset: absent
        assert created.headers["x-content-type-options"] == "nosniff" and created.headers["x-request-id"]
        assert "default-src 'self'" in created.headers["content-security-policy"]
        events = f"/v1/sessions/{session_id}/events"

        first = await read_events(http, events, until="round_images")
        assert first.retry_ms == 2000
        assert first.names()[0] == "round_started" and {"progress", "preview"} <= set(first.names())
        assert first.events[0].data["roundStarted"] == {"round": 1, "prompt": "a red circle on a blue background",
                                                         "numImages": 2, "liked": 0, "disliked": 0}
        round1 = first.events[-1].data["roundImages"]
        assert round1["round"] == 1 and [i["image"]["seed"] for i in round1["images"]] == ["11", "12"]
        for image in round1["images"]:
            png = (await http.get(f"/v1/images/{image['image']['id']}.png")).content
            assert png == base64.b64decode(image["image"]["png"])  # the event's bytes are the route's
            assert png_size(png) == (image["image"]["width"], image["image"]["height"]) == (64, 64)

        liked, disliked = image_ids(round1)
        fed = await http.post(f"/v1/sessions/{session_id}/feedback",
                              json={"likedImageIds": [liked], "dislikedImageIds": [disliked]})
        assert fed.status_code == 200, fed.text
        assert fed.json()["phase"] == "SESSION_PHASE_GENERATING" and fed.json()["runningRound"] == 2
        assert fed.json()["likedImageIds"] == [liked] and fed.json()["dislikedImageIds"] == [disliked]
        second = await read_events(http, events, until="round_images", last_event_id=first.events[-1].id)
        assert second.events[0].data["roundStarted"]["liked"] == 1
        assert second.events[0].data["roundStarted"]["disliked"] == 1
        round2 = second.events[-1].data["roundImages"]
        assert round2["round"] == 2 and len(round2["images"]) == 2

        edited = "a red circle on a green background"
        fed = await http.post(f"/v1/sessions/{session_id}/feedback", json={
            "likedImageIds": [image_ids(round2)[0]], "dislikedImageIds": [image_ids(round2)[1]], "prompt": edited})
        assert fed.status_code == 200, fed.text
        assert fed.json()["params"]["prompt"] == edited and fed.json()["runningRound"] == 3
        third = await read_events(http, events, until="round_images", last_event_id=second.events[-1].id)
        assert third.events[0].data["roundStarted"]["prompt"] == edited
        round3 = third.events[-1].data["roundImages"]
        assert round3["round"] == 3
        chosen = image_ids(round3)[0]

        finalized = await http.post(f"/v1/sessions/{session_id}/finalize", json={"imageId": chosen})
        assert finalized.status_code == 202, finalized.text
        assert finalized.json()["phase"] == "SESSION_PHASE_FINALIZING"
        assert finalized.json()["chosenImageId"] == chosen
        last = await read_events(http, events, last_event_id=third.events[-1].id)  # to the answer's end
        assert last.ended and last.names()[-1] == "final" and "upscale_progress" in last.names()
        final = last.events[-1].data["final"]
        assert final["sourceImageId"] == chosen
        for event in [*first.events, *second.events, *third.events, *last.events]:
            served.validate(event.data, "philip.v1.SessionEvent")
            assert event.data["sessionId"] == session_id

        final_id = final["image"]["id"]
        image = await http.get(f"/v1/images/{final_id}.png")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert png_size(image.content) == (4 * 64, 4 * 64)  # 4x the round image's
        assert image.content == base64.b64decode(final["image"]["png"])
        assert image.headers["etag"] == f'"{final_id}"'
        cache = [part.strip() for part in image.headers["cache-control"].split(",")]
        assert "immutable" in cache and "max-age=31536000" in cache
        again = await http.get(f"/v1/images/{final_id}.png", headers={"If-None-Match": image.headers["etag"]})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == f'"{final_id}"'
        assert (await http.get(f"/v1/images/{final_id}.png", headers={"If-None-Match": '"other"'})).status_code == 200

        done = (await http.get(f"/v1/sessions/{session_id}")).json()
        served.validate(done, "philip.v1.SessionSnapshot")
        assert done["phase"] == "SESSION_PHASE_DONE" and done["final"]["image"]["id"] == final_id
        assert [r["round"] for r in done["rounds"]] == [1, 2, 3] and done["lastEventId"] == last.events[-1].id

        listed = (await http.get("/v1/sessions", params={"pageSize": 100})).json()
        served.validate(listed, "philip.v1.ListSessionsResponse")
        mine = listed["sessions"][0]
        assert mine["sessionId"] == session_id and mine["phase"] == "SESSION_PHASE_DONE"
        assert mine["rounds"] == 3 and mine["finalImageId"] == final_id and mine["prompt"] == edited
        created_ms = [int(s["createdMs"]) for s in listed["sessions"]]
        assert created_ms == sorted(created_ms, reverse=True)
    async with aio.insecure_channel(served.grpc) as channel:
        reply = await gateway_pb2_grpc.GatewayStub(channel).ListSessions(gateway_pb2.ListSessionsRequest(page_size=100))
    assert [s.session_id for s in reply.sessions] == [s["sessionId"] for s in listed["sessions"]]
    assert reply.sessions[0].final_image_id == final_id


async def test_sessions_are_listed_newest_first_in_pages(served: Served) -> None:
    async with served.client() as http:
        ids = []
        for n in range(3):
            snapshot = await start_session(http, start_body(f"a shape number {n}", steps=2))
            ids.append(snapshot["sessionId"])
            assert (await http.post(f"/v1/sessions/{snapshot['sessionId']}/cancel")).status_code == 200
        page = (await http.get("/v1/sessions", params={"pageSize": 2})).json()
        assert [s["sessionId"] for s in page["sessions"]] == ids[::-1][:2] and page["nextPageToken"]
        rest = (await http.get("/v1/sessions", params={"pageSize": 1, "pageToken": page["nextPageToken"]})).json()
        assert [s["sessionId"] for s in rest["sessions"]] == [ids[0]]
        assert {s["phase"] for s in page["sessions"]} == {"SESSION_PHASE_CANCELLED"}
        bad = await http.get("/v1/sessions", params={"pageSize": "many"})
        assert bad.status_code == 400 and assert_status_body(bad, 3)["message"].startswith("pageSize")


# ---- 2. SSE resume -----------------------------------------------------------------------------------


def stream_key(event_id: str) -> tuple[int, int]:
    return parse_stream_id(event_id)


async def test_sse_resumes_after_last_event_id(served: Served) -> None:
    async with served.client() as http:
        session_id = (await start_session(http, start_body("a green triangle", previewEvery=1, seed=7)))["sessionId"]
        events = f"/v1/sessions/{session_id}/events"
        part1 = await read_events(http, events, count=3)  # then we hang up, mid-round
        assert len(part1.events) == 3
        part2 = await read_events(http, events, until="round_images", last_event_id=part1.events[-1].id)
        cancelled = await http.post(f"/v1/sessions/{session_id}/cancel", json={})
        assert cancelled.status_code == 200 and cancelled.json()["phase"] == "SESSION_PHASE_CANCELLED"
        part3 = await read_events(http, events, last_event_id=part2.events[-1].id)
        assert part3.ended and part3.names() == ["cancelled"]

        full = await read_events(http, events)  # no Last-Event-ID: the whole replay, then the answer ends
        assert full.ended
        resumed = [*part1.events, *part2.events, *part3.events]
        kept = set(full.ids())  # a finished round's progress ticks and previews have left the stream since
        assert [(e.id, e.event, e.data) for e in resumed if e.id in kept] == [(e.id, e.event, e.data)
                                                                            for e in full.events]
        assert {e.event for e in resumed if e.id not in kept} == {"progress", "preview"}
        keys = [stream_key(i) for i in full.ids()]
        assert keys == sorted(set(keys)) and len(keys) == len(full.events)  # strictly increasing, no duplicate
        assert full.names()[0] == "round_started" and full.names()[-2:] == ["round_images", "cancelled"]
        assert cancelled.json()["lastEventId"] == full.ids()[-1]

        for i, event in enumerate(full.events):  # from every position: exactly the events after it
            tail = await read_events(http, events, last_event_id=event.id)
            assert tail.ids() == full.ids()[i + 1:]
        between = await read_events(http, events, last_event_id=f"{keys[0][0]}-{keys[0][1]}")
        assert between.ids() == full.ids()[1:]
        assert (await read_events(http, events, last_event_id="0-0")).ids() == full.ids()
        by_query = await read_events(http, f"{events}?lastEventId={full.ids()[-2]}")
        assert by_query.ids() == full.ids()[-1:]

        for bad in ("garbage", "1-2-3", "-1-0", f"{2**64}-0", "x" * 300):
            refused = await http.get(events, headers={"Last-Event-ID": bad})
            assert refused.status_code == 400, (bad, refused.text)
            body = assert_status_body(refused, 3)
            assert "Last-Event-ID" in body["message"]
            assert detail(body, BAD_REQUEST)["fieldViolations"][0]["field"] == "Last-Event-ID"  # type: ignore[index]
        refused = await http.get("/v1/training-jobs/tj_0/events", headers={"Last-Event-ID": "1-0"})
        assert refused.status_code == 400 and "event number" in assert_status_body(refused, 3)["message"]
        unknown = await http.get("/v1/sessions/ses_nope/events")
        assert unknown.status_code == 404 and assert_status_body(unknown, 5)


# ---- 3. a slow SSE reader ---------------------------------------------------------------------------


async def timed_round(http: httpx.AsyncClient, session_id: str, after: str, liked: str) -> tuple[float, Stream]:
    started = time.perf_counter()
    fed = await http.post(f"/v1/sessions/{session_id}/feedback", json={"likedImageIds": [liked]})
    assert fed.status_code == 200, fed.text
    stream = await read_events(http, f"/v1/sessions/{session_id}/events", until="round_images", last_event_id=after)
    return time.perf_counter() - started, stream


async def test_a_slow_sse_reader_does_not_slow_the_session(served: Served) -> None:
    body = start_body("a yellow star on black", steps=4, previewEvery=1, seed=21)
    # A reader with a tiny receive window that reads nothing: the edge's writes back up at once.
    tiny = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    async with served.client() as http, served.client(transport=tiny) as slow_client:
        durations = {}
        for kind in ("alone", "with a slow reader", "alone again"):
            session_id = (await start_session(http, body))["sessionId"]
            events = f"/v1/sessions/{session_id}/events"
            first = await read_events(http, events, until="round_images")
            liked = image_ids(first.events[-1].data["roundImages"])[0]
            if kind != "with a slow reader":
                durations[kind], _ = await timed_round(http, session_id, first.events[-1].id, liked)
                await http.post(f"/v1/sessions/{session_id}/cancel")
                continue
            async with slow_client.stream("GET", events) as slow:  # the answer began; its body waits unread
                assert slow.status_code == 200
                durations[kind], second = await timed_round(http, session_id, first.events[-1].id, liked)
                assert second.names()[-1] == "round_images" and "preview" in second.names()
                chosen = image_ids(second.events[-1].data["roundImages"])[0]
                assert (await http.post(f"/v1/sessions/{session_id}/finalize", json={"imageId": chosen})).is_success
                ended = await read_events(http, events, until="final", last_event_id=second.events[-1].id)
                driver = [*first.events, *second.events, *ended.events]
                await asyncio.sleep(0.5)
                late = Stream()
                drain_started = time.perf_counter()
                async with asyncio.timeout(60):
                    async for _ in frames(slow, late):
                        pass
                drained = time.perf_counter() - drain_started
            assert late.ended
            # Round images and the final are never dropped; previews and progress ticks may be coalesced.
            essential = [(e.id, e.event) for e in driver if e.event not in ("preview", "progress")]
            assert [(e.id, e.event) for e in late.events if e.event not in ("preview", "progress")] == essential
            assert [e.data["roundImages"]["round"] for e in late.events if e.event == "round_images"] == [1, 2]
            assert late.names()[-1] == "final"
            assert set(late.ids()) <= {e.id for e in driver}
    print(f"\nround durations {durations}; previews: driver {[e.event for e in driver].count('preview')}, "
          f"slow reader {late.names().count('preview')}; drain {drained:.2f}s")
    baseline = max(durations["alone"], durations["alone again"])
    assert durations["with a slow reader"] < 1.5 * baseline + 0.5, durations


# ---- 6. Idempotency-Key -------------------------------------------------------------------------------


async def test_idempotency_key_replays_the_first_answer(served: Served) -> None:
    async with served.client() as http:
        key = f"k-{uuid.uuid4().hex}"
        body = json.dumps(start_body("a purple square", steps=2)).encode()
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        first = await http.post("/v1/sessions", content=body, headers=headers)
        assert first.status_code == 201 and "idempotency-replayed" not in first.headers
        retry = await http.post("/v1/sessions", content=body, headers=headers)
        assert retry.status_code == 201 and retry.headers["idempotency-replayed"] == "true"
        assert retry.json()["sessionId"] == first.json()["sessionId"] and retry.content == first.content
        session_id = first.json()["sessionId"]

        other = await http.post("/v1/sessions", json=start_body("a purple circle", steps=2),
                                headers={"Idempotency-Key": key})
        assert other.status_code == 422, other.text
        refused = assert_status_body(other, 3)
        assert "Idempotency-Key" in refused["message"]
        assert detail(refused, BAD_REQUEST)["fieldViolations"][0]["field"] == "Idempotency-Key"  # type: ignore[index]
        for bad in ("x" * 129, "tab\there"):
            wrong = await http.post("/v1/sessions", content=body, headers={**headers, "Idempotency-Key": bad})
            assert wrong.status_code == 400 and assert_status_body(wrong, 3)
        fresh = await http.post("/v1/sessions", content=body, headers={**headers, "Idempotency-Key": key + "-2"})
        assert fresh.status_code == 201 and fresh.json()["sessionId"] != session_id

        # Two at once with one new key: one session; the other answer is the replay or 409 + Retry-After: 1.
        racing = {**headers, "Idempotency-Key": key + "-3"}
        answers = await asyncio.gather(*(http.post("/v1/sessions", content=body, headers=racing) for _ in range(2)))
        made = [a for a in answers if a.status_code == 201 and "idempotency-replayed" not in a.headers]
        assert len(made) == 1, [(a.status_code, a.text) for a in answers]
        for answer in answers:
            if answer.status_code == 409:
                assert answer.headers["retry-after"] == "1" and assert_status_body(answer, 9)
            elif answer is not made[0]:
                assert answer.status_code == 201 and answer.json()["sessionId"] == made[0].json()["sessionId"]

        listed = [s["sessionId"] for s in (await http.get("/v1/sessions", params={"pageSize": 100})).json()["sessions"]]
        assert listed.count(session_id) == 1 and listed[:3] == [made[0].json()["sessionId"], fresh.json()["sessionId"],
                                                                  session_id]
        for sid in listed[:3]:
            await http.post(f"/v1/sessions/{sid}/cancel")

        params = {"prompt": "a small house", "numImages": 1, "steps": 2, "seed": 4}
        job_headers = {"Idempotency-Key": f"g-{uuid.uuid4().hex}"}
        job = await http.post("/v1/generations", json=params, headers=job_headers)
        assert job.status_code == 202, job.text
        served.validate(job.json(), "philip.v1.Job")
        job_id = job.json()["jobId"]
        assert job.headers["location"] == f"/v1/jobs/{job_id}"
        again = await http.post("/v1/generations", json=params, headers=job_headers)
        assert again.status_code == 202 and again.headers["idempotency-replayed"] == "true"
        assert again.json()["jobId"] == job_id
        stream = await read_events(http, f"/v1/jobs/{job_id}/events")
        assert stream.ended and stream.names()[-1] == "result"
        done = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert done["state"] == "JOB_STATE_SUCCEEDED" and len(done["images"]) == 1
        other_job = await http.post("/v1/generations", json=params)  # no key: a job of its own
        assert other_job.status_code == 202 and other_job.json()["jobId"] != job_id
        cancelled = await http.post(f"/v1/jobs/{other_job.json()['jobId']}/cancel")
        assert cancelled.status_code in (200, 409), cancelled.text


# ---- 8. the OpenAPI document ---------------------------------------------------------------------------


def route_table() -> list[Any]:
    """The route table of an edge app built here (handlers are not called)."""
    state = EdgeState(core=SimpleNamespace(sessions=None), idempotency=None, max_upload_bytes=1)  # type: ignore
    app = build_app(state, None)
    return list(app.state.routes)


async def test_the_openapi_document_validates_and_lists_every_route(served: Served) -> None:
    doc = served.doc
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    table = route_table()
    assert len(table) >= 20
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(r.method, r.path) for r in table}
    assert doc == document(table, doc["info"]["version"])  # the served document is the table's, nothing else
    operation_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(set(operation_ids)) == len(operation_ids)
    for route in table:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["summary"] == route.summary and op["tags"] == [route.tag]
        ok = op["responses"]["200" if route.kind in ("sse", "png") else str(route.status)]
        if route.kind == "sse":
            assert "text/event-stream" in ok["content"]
            assert any(p["name"] == "Last-Event-ID" for p in op["parameters"])
        elif route.kind == "png":
            assert "image/png" in ok["content"] and "304" in op["responses"]
        else:
            ref = ok["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{route.response.DESCRIPTOR.full_name}"
        assert op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith("rpc.Status")
        assert route.idempotent_create == any(p["name"] == "Idempotency-Key" for p in op.get("parameters", []))
        assert {p["name"] for p in op.get("parameters", []) if p["in"] == "path"} == set(
            fuzzing.path_names(route.path))
    # Every reference resolves (the validator above checks the structure, not that targets exist).
    refs = set(fuzzing.refs_in(doc))
    assert refs and all(ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"] for ref in refs)
    async with served.client() as http:
        page = await http.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert all(f"<code>{html.escape(path)}</code>" in page.text for path in doc["paths"])
        for route in table:  # each is served under its method (not the router's 404 / 405)
            url = route.path.replace("{", "").replace("}", "")
            answer = await http.request(route.method, url, headers={"Last-Event-ID": "bad"})
            if answer.headers.get("content-type", "").startswith("text/event-stream"):
                continue
            assert answer.status_code != 405 and "no route" not in answer.text, (route.method, url, answer.text)
            if answer.status_code >= 400:
                assert_status_body(answer)
        for path in ("/healthz", "/readyz"):
            assert (await http.get(path)).json() == {"status": "ok"}
