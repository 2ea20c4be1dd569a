"""What a session keeps in the store and for how long (issue 22, item 3), on real gRPC and Redis.

A session lives PHILIP_SESSION_IDLE_S from its last activity (before: a TTL set once at start, so a
session in use died after an hour while an abandoned one's events never expired), and a finished
round's previews and progress ticks leave its event stream (before: every preview of every round stayed).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc import aio
from redis.asyncio import Redis

from philip.store import RedisStore
from philip.v1 import common_pb2, gateway_pb2
from tests.reliability.support import REDIS_URL, deployment, gateway

IDLE_S = 3.0
Msg = gateway_pb2.SessionClientMessage
pytestmark = pytest.mark.slow


def _start() -> Msg:
    params = common_pb2.GenerationParams(prompt="a green circle", num_images=2, steps=4, seed=9, preview_every=1)
    return Msg(start=gateway_pb2.SessionStart(params=params))


async def _until_round(call: Any, number: int) -> list[gateway_pb2.SessionEvent]:
    seen = []
    while True:
        event = await asyncio.wait_for(call.read(), 60)
        assert event is not aio.EOF
        seen.append(event)
        if event.WhichOneof("event") == "round_images" and event.round == number:
            return seen


async def _first_round(stub: Any) -> tuple[Any, list[gateway_pb2.SessionEvent], str]:
    """A new session's Session call, its events up to round 1's images, and its id."""
    call = stub.Session()
    await call.write(_start())
    events = await _until_round(call, 1)
    return call, events, events[0].session_id


async def _keys_naming(ids: list[str]) -> list[bytes]:
    raw = Redis.from_url(REDIS_URL)
    try:
        return [k async for k in raw.scan_iter(match="philip-test:*", count=1000) if any(i.encode() in k for i in ids)]
    finally:
        await raw.aclose()


async def test_a_session_lives_idle_s_from_its_last_activity_and_then_is_gone_with_all_its_keys() -> None:
    async with deployment(session_idle_s=IDLE_S) as (a,):
        channel, stub = gateway(a["gateway"])
        try:
            # In use for 3x the idle timeout: each feedback is activity, so nothing expires.
            call, events, session_id = await _first_round(stub)
            first_images = [i.image.id for i in events[-1].round_images.images]
            began, number = time.perf_counter(), 1
            while time.perf_counter() - began < 3 * IDLE_S:
                await asyncio.sleep(IDLE_S / 3)
                number += 1
                liked = events[-1].round_images.images[0].image.id
                await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[liked])))
                events = await _until_round(call, number)
            snap = await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
            assert len(snap.rounds) == number and [i.image.id for i in snap.rounds[0].images] == first_images
            assert all(i.image.png for r in snap.rounds for i in r.images)  # every image is still there
            call.cancel()
            ids = [session_id, *(i.image.id for r in snap.rounds for i in r.images)]
            assert await _keys_naming(ids)

            # Then left alone past the timeout: gone, with every key that names it or its images.
            await asyncio.sleep(IDLE_S + 1.0)
            with pytest.raises(aio.AioRpcError) as gone:
                await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            assert await _keys_naming(ids) == []
        finally:
            await channel.close()


async def test_the_stream_of_a_10_round_session_holds_no_previews_of_finished_rounds() -> None:
    async with deployment(session_idle_s=600) as (a,):
        channel, stub = gateway(a["gateway"])
        try:
            call, events, session_id = await _first_round(stub)
            live = [e.WhichOneof("event") for e in events]
            for number in range(2, 11):
                liked = events[-1].round_images.images[0].image.id
                await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[liked])))
                events = await _until_round(call, number)
                live += [e.WhichOneof("event") for e in events]
            assert live.count("preview") >= 10  # a live reader saw them as they came
            store = RedisStore(REDIS_URL, prefix=_prefix_of(await _keys_naming([session_id])), socket_timeout=2.0)
            try:
                entries = await store.read_events(f"session:{session_id}", count=10_000)
            finally:
                await store.close()
            kept = [gateway_pb2.SessionEvent.FromString(e.payload) for e in entries]
            kinds = [e.WhichOneof("event") for e in kept]
            assert kinds.count("round_images") == 10 and kinds.count("round_started") == 10
            assert "preview" not in kinds and "progress" not in kinds, kinds
            call.cancel()
        finally:
            await channel.close()


def _prefix_of(keys: list[bytes]) -> str:
    """The deployment's key prefix, read off one of its keys ("philip-test:<hex>:...")."""
    first = keys[0].decode()
    return first[: first.index(":", len("philip-test:")) + 1]
