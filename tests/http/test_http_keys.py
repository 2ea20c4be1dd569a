"""The HTTP edge with API keys (docs/HTTP.md): `serve("all")` on Redis with a keys file of two tenants,
each allowed one open session, and uploads limited to 1 MiB (``max_message_mb=1``).

401 without a valid key (health and the OpenAPI document need none); another tenant's session, image,
generation job, training job and adapter are 404; a quota is 429 with Retry-After and RetryInfo;
bodies over their limit are 413 naming the limit.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from philip.bench.server_process import free_port
from philip.quotas import SESSIONS
from tests.gateway.deployment import Deployment, deployed
from tests.http.support import RETRY_INFO, assert_status_body, detail, drop_redis_keys, read_events, redis_store
from tests.personalizer.conftest import reference_pngs

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
RUN = uuid.uuid4().hex[:8]
ACME, GLOBEX = f"acme-{RUN}", f"globex-{RUN}"
LIMIT = 1024 * 1024  # max_message_mb=1, and the JSON limit
SESSION = {"params": {"prompt": "a red circle", "numImages": 2, "steps": 2, "seed": 3}}
GENERATION = {"prompt": "a red circle", "numImages": 1, "steps": 2, "seed": 3}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    store, prefix = await redis_store()
    try:
        async with deployed(tmp_path_factory.mktemp("http-keys"), (ACME, GLOBEX), store=store, http_port=free_port(),
                            quota_sessions=1, max_message_mb=1) as running:
            yield running
    finally:
        await store.close()
        await drop_redis_keys(prefix)


def client(deployment: Deployment, tenant: str | None = None, **headers: str) -> httpx.AsyncClient:
    if tenant is not None:
        headers["Authorization"] = f"Bearer {deployment.keys[tenant]}"
    return httpx.AsyncClient(base_url=f"http://{deployment.addresses['http']}", headers=headers, timeout=60)


def photos(pngs: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (f"ref{i}.png", png, "image/png")) for i, png in enumerate(pngs)]


# ---- 4. auth and tenants -----------------------------------------------------------------------------


async def test_v1_needs_a_valid_key_but_health_and_the_document_do_not(deployment: Deployment) -> None:
    wrong = ({}, {"Authorization": "Bearer phk_" + "0" * 48}, {"Authorization": "Bearer not-a-key"},
             {"Authorization": "Bearer"}, {"Authorization": deployment.keys[ACME]},  # no "Bearer "
             {"Authorization": f"Basic {deployment.keys[ACME]}"})
    async with client(deployment) as http:
        for headers in wrong:
            for method, url in (("GET", "/v1/sessions"), ("POST", "/v1/sessions"), ("GET", "/v1/sessions/x/events"),
                                ("GET", "/v1/images/img_x.png"), ("POST", "/v1/adapters"), ("GET", "/v1/styles"),
                                ("GET", "/v1/no-such-route")):
                refused = await http.request(method, url, headers=headers, json=SESSION if method == "POST" else None)
                assert refused.status_code == 401, (headers, url, refused.text)
                body = assert_status_body(refused, 16)
                assert "API key" in body["message"] and "Bearer" in body["message"]
                assert refused.headers["x-request-id"] and refused.headers["x-content-type-options"] == "nosniff"
        for url in ("/healthz", "/readyz"):
            assert (await http.get(url)).json() == {"status": "ok"}
        doc = await http.get("/openapi.json")
        assert doc.status_code == 200 and doc.json()["openapi"] == "3.1.0"
        assert doc.json()["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        assert (await http.get("/docs")).status_code == 200
    async with client(deployment, ACME) as http:
        styles = await http.get("/v1/styles")
        assert styles.status_code == 200 and {s["name"] for s in styles.json()["styles"]} >= {"flat"}


async def test_another_tenants_things_are_not_found(deployment: Deployment) -> None:
    async with client(deployment, ACME) as acme, client(deployment, GLOBEX) as globex:
        session_id = (await acme.post("/v1/sessions", json=SESSION)).json()["sessionId"]
        round1 = await read_events(acme, f"/v1/sessions/{session_id}/events", until="round_images")
        image_id = round1.events[-1].data["roundImages"]["images"][0]["image"]["id"]
        key = {"Idempotency-Key": f"same-{RUN}"}
        job = await acme.post("/v1/generations", json=GENERATION, headers=key)
        assert job.status_code == 202, job.text
        job_id = job.json()["jobId"]
        assert (await read_events(acme, f"/v1/jobs/{job_id}/events")).names()[-1] == "result"
        job_image = (await acme.get(f"/v1/jobs/{job_id}")).json()["images"][0]["id"]
        # Idempotency keys are per tenant: globex's same key and body make globex's own job.
        theirs = await globex.post("/v1/generations", json=GENERATION, headers=key)
        assert theirs.status_code == 202 and "idempotency-replayed" not in theirs.headers
        assert theirs.json()["jobId"] != job_id
        await read_events(globex, f"/v1/jobs/{theirs.json()['jobId']}/events")

        token = "zq" + "".join(chr(ord("a") + int(c, 16)) for c in RUN[:6])  # lowercase letters only
        training = await acme.post("/v1/adapters", files=photos(reference_pngs(4)),
                                   data={"token": token, "class_word": "shape", "method": "LORA", "steps": "2"})
        assert training.status_code == 202, training.text
        training_job = training.json()
        assert training_job["jobId"].startswith("tj_") and training_job["token"] == token
        assert training_job["method"] == "ADAPTER_METHOD_LORA"
        assert training.headers["location"] == f"/v1/training-jobs/{training_job['jobId']}"
        watched = await read_events(acme, f"/v1/training-jobs/{training_job['jobId']}/events", timeout_s=120)
        assert watched.ended and [int(i) for i in watched.ids()] == list(range(1, len(watched.events) + 1))
        done = watched.events[-1].data["job"]
        assert done["state"] == "JOB_STATE_SUCCEEDED", done
        adapter_id = done["adapterId"]
        listed = (await acme.get("/v1/adapters")).json()["adapters"]
        assert [a["adapterId"] for a in listed] == [adapter_id] and listed[0]["token"] == token

        foreign: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", f"/v1/sessions/{session_id}", None),
            ("POST", f"/v1/sessions/{session_id}/feedback", {"likedImageIds": [image_id]}),
            ("POST", f"/v1/sessions/{session_id}/finalize", {"imageId": image_id}),
            ("POST", f"/v1/sessions/{session_id}/cancel", None),
            ("GET", f"/v1/sessions/{session_id}/events", None),
            ("GET", f"/v1/images/{image_id}.png", None),
            ("GET", f"/v1/images/{job_image}.png", None),
            ("GET", f"/v1/jobs/{job_id}", None),
            ("POST", f"/v1/jobs/{job_id}/cancel", None),
            ("GET", f"/v1/jobs/{job_id}/events", None),
            ("GET", f"/v1/training-jobs/{training_job['jobId']}", None),
            ("POST", f"/v1/training-jobs/{training_job['jobId']}/cancel", None),
            ("GET", f"/v1/training-jobs/{training_job['jobId']}/events", None),
            ("GET", f"/v1/adapters/{adapter_id}", None),
            ("DELETE", f"/v1/adapters/{adapter_id}", None),
        ]
        for method, url, body in foreign:
            answer = await globex.request(method, url, json=body)
            assert answer.status_code == 404, (method, url, answer.status_code, answer.text)
            assert_status_body(answer, 5)
            assert token not in answer.text and "a red circle" not in answer.text  # nothing of acme's leaks
        cached = await globex.get(f"/v1/images/{image_id}.png", headers={"If-None-Match": f'"{image_id}"'})
        assert cached.status_code == 404  # not a 304 that would confirm the id exists
        assert (await globex.get("/v1/adapters")).json()["adapters"] == []
        assert session_id not in [s["sessionId"] for s in (await globex.get("/v1/sessions")).json()["sessions"]]
        activity = (await globex.get("/v1/activity")).json()["entries"]
        assert not {e["subjectId"] for e in activity} & {session_id, training_job["jobId"], adapter_id}

        # acme's things are untouched by globex's attempts
        assert (await acme.get(f"/v1/adapters/{adapter_id}")).json()["token"] == token
        assert (await acme.get(f"/v1/sessions/{session_id}")).json()["phase"] == "SESSION_PHASE_AWAITING_FEEDBACK"
        assert (await acme.get(f"/v1/images/{image_id}.png")).headers["content-type"] == "image/png"
        mine = [s["sessionId"] for s in (await acme.get("/v1/sessions")).json()["sessions"]]
        assert mine == [session_id]
        assert (await acme.post(f"/v1/sessions/{session_id}/cancel")).json()["phase"] == "SESSION_PHASE_CANCELLED"
        deleted = await acme.delete(f"/v1/adapters/{adapter_id}")
        assert deleted.status_code == 200, deleted.text
        assert (await acme.get(f"/v1/adapters/{adapter_id}")).status_code == 404


# ---- 5. quotas: 429 + Retry-After -------------------------------------------------------------------


async def test_a_quota_is_429_with_retry_after_and_retry_info(deployment: Deployment) -> None:
    async with client(deployment, GLOBEX) as globex, client(deployment, ACME) as acme:
        first = await globex.post("/v1/sessions", json=SESSION)
        assert first.status_code == 201, first.text
        refused = await globex.post("/v1/sessions", json=SESSION)
        assert refused.status_code == 429, refused.text
        retry_after = refused.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        assert int(retry_after) == int(SESSIONS.retry_after_s)
        body = assert_status_body(refused, 8)
        assert "open sessions" in body["message"]
        assert detail(body, RETRY_INFO) == {"@type": RETRY_INFO, "retryDelay": f"{int(SESSIONS.retry_after_s)}s"}
        # the other tenant has a quota of its own
        other = await acme.post("/v1/sessions", json=SESSION)
        assert other.status_code == 201, other.text
        await acme.post(f"/v1/sessions/{other.json()['sessionId']}/cancel")
        # cancelling gives the slot back
        await globex.post(f"/v1/sessions/{first.json()['sessionId']}/cancel")
        again = await globex.post("/v1/sessions", json=SESSION)
        assert again.status_code == 201, again.text
        await globex.post(f"/v1/sessions/{again.json()['sessionId']}/cancel")


# ---- 7. bodies over their limit: 413 -----------------------------------------------------------------


async def test_bodies_over_their_limit_are_413_naming_the_limit(deployment: Deployment) -> None:
    async with client(deployment, ACME) as acme:
        big = [png + b"\0" * (300 * 1024) for png in reference_pngs(4)]  # 4 x 300 KiB > 1 MiB
        upload = await acme.post("/v1/adapters", files=photos(big),
                                 data={"token": "zqbig", "class_word": "shape", "steps": "2"})
        assert upload.status_code == 413, upload.text
        assert str(LIMIT) in assert_status_body(upload, 8)["message"]
        assert "retry-after" not in upload.headers

        field = await acme.post("/v1/adapters", files=photos(reference_pngs(4)),
                                data={"token": "z" * 70_000, "class_word": "shape"})
        assert field.status_code == 413 and "65536" in assert_status_body(field, 8)["message"]

        prompt = "y" * (LIMIT + 10)
        declared = await acme.post("/v1/sessions", json={"params": {"prompt": prompt}})
        assert declared.status_code == 413 and str(LIMIT) in assert_status_body(declared, 8)["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused as it arrives
            yield b'{"params": {"prompt": "'
            for _ in range(12):
                yield b"y" * (100 * 1024)
            yield b'"}}'

        chunked = await acme.post("/v1/sessions", content=chunks(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413 and str(LIMIT) in assert_status_body(chunked, 8)["message"]
        # under the limit, the same route answers as usual (here: a prompt that is too long is a 400)
        long = await acme.post("/v1/sessions", json={"params": {"prompt": "y" * 2000}})
        assert long.status_code == 400
        assert detail(assert_status_body(long, 3), "type.googleapis.com/google.rpc.BadRequest") is not None
