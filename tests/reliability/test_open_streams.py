"""Open streams cost a bounded amount (issue 22, item 1), on real gRPC, HTTP and Redis.

500 idle subscribers on one gateway tail their session through the store's one shared connection, so
writes still find connections (before, each held a pooled one in its own XREAD: 402 of 500 ended
"Too many connections"); a session driven over HTTP meanwhile runs its rounds at its usual speed; the
501st stream beyond PHILIP_MAX_STREAMS=500 is refused at once with RESOURCE_EXHAUSTED and a retry delay.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import httpx
import pytest
from grpc import aio

from philip.bench.server_process import free_port
from philip.rpc.status import error_details
from philip.v1 import gateway_pb2
from tests.reliability.support import deployment, gateway

SUBSCRIBERS = 500
pytestmark = pytest.mark.slow


async def _http_round(http: httpx.AsyncClient, session_id: str, number: int,
                      liked: list[str]) -> tuple[float, list[str]]:
    """Send feedback (round > 1) and wait for the round's images; (seconds, image ids)."""
    began = time.perf_counter()
    if number > 1:
        sent = await http.post(f"/v1/sessions/{session_id}/feedback", json={"likedImageIds": liked})
        assert sent.status_code == 200, sent.text
    while True:
        snap = (await http.get(f"/v1/sessions/{session_id}")).json()
        if snap["phase"] == "SESSION_PHASE_AWAITING_FEEDBACK" and len(snap.get("rounds", [])) == number:
            images = [i["image"]["id"] for i in snap["rounds"][-1]["images"]]
            return time.perf_counter() - began, images
        await asyncio.sleep(0.05)


async def _rounds(http: httpx.AsyncClient, count: int) -> list[float]:
    body: dict[str, Any] = {"params": {"prompt": "a red circle", "numImages": 2, "steps": 4, "seed": 3,
                                       "previewEvery": 1}}
    started = await http.post("/v1/sessions", json=body)
    assert started.status_code == 201, started.text
    session_id = started.json()["sessionId"]
    times, liked = [], []
    for number in range(1, count + 1):
        took, images = await _http_round(http, session_id, number, liked)
        times.append(took)
        liked = images[:1]
    return times


async def test_500_idle_subscribers_leave_sessions_alone_and_the_501st_is_refused() -> None:
    async with (deployment(max_streams=SUBSCRIBERS, http_port=free_port(), redis_max_connections=16) as (addresses,),
                httpx.AsyncClient(timeout=60) as http):
        http.base_url = f"http://{addresses['http']}"
        await _rounds(http, 1)  # warm: the model is loaded and compiled paths are hot
        alone = await _rounds(http, 3)
        idle_id = (await http.post("/v1/sessions", json={"params": {"prompt": "idle", "numImages": 1,
                                                                     "steps": 2}})).json()["sessionId"]
        channels = [gateway(addresses["gateway"]) for _ in range(5)]
        calls = [channels[k % 5][1].Subscribe(gateway_pb2.SubscribeRequest(session_id=idle_id))
                 for k in range(SUBSCRIBERS)]
        try:
            firsts = await asyncio.wait_for(asyncio.gather(*[c.read() for c in calls]), 60)
            assert all(e.session.WhichOneof("event") == "round_started" for e in firsts)
            beside = await _rounds(http, 3)  # 500 subscribers idle in the tail meanwhile

            one_more = channels[0][1].Subscribe(gateway_pb2.SubscribeRequest(session_id=idle_id))
            began = time.perf_counter()
            with pytest.raises(aio.AioRpcError) as refused:
                await asyncio.wait_for(one_more.read(), 5)
            assert time.perf_counter() - began < 1.0
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "PHILIP_MAX_STREAMS" in (refused.value.details() or "")
            assert error_details(refused.value)["retry_after_s"] > 0
            sse = await http.get(f"/v1/sessions/{idle_id}/events")
            assert sse.status_code == 429 and sse.headers["retry-after"]

            # Every subscriber is still there and gets what comes next.
            assert (await http.post(f"/v1/sessions/{idle_id}/cancel", json={})).status_code == 200
            seen = await asyncio.wait_for(asyncio.gather(*[_kinds_until_end(c) for c in calls]), 60)
            assert all(kinds[-1] == "cancelled" for kinds in seen)
        finally:
            for call in calls:
                call.cancel()
            for channel, _ in channels:
                await channel.close()
        median = sorted(beside)[1] / sorted(alone)[1]
        print(f"rounds alone {alone}, beside {SUBSCRIBERS} subscribers {beside}: ratio {median:.2f}")
        assert median < 1.6, f"rounds took {beside} beside {SUBSCRIBERS} subscribers, {alone} alone"


async def _kinds_until_end(call: Any) -> list[str]:
    kinds = []
    while (event := await call.read()) is not aio.EOF:
        kinds.append(str(event.session.WhichOneof("event")))
    return kinds
