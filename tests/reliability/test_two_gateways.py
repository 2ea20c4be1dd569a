"""Two gateway replicas on one Redis (issue 22, item 6): every session transition is one compare-and-set.

Before, with the services as separate processes, two feedbacks sent at the same moment through the two
replicas started two rounds in 5 of 6 trials, and a cancel acknowledged through one replica was undone
by the other's finishing round in 4 of 6; a round waiting in a queue for longer than 60 s was declared
stale by the other replica. Here the generator, refiner and first gateway share a process and the second
gateway has its own store client, as another pod would.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest
from grpc import aio

from philip.v1 import common_pb2, gateway_pb2, generator_pb2
from tests.reliability.support import deployment, gateway

Msg = gateway_pb2.SessionClientMessage
TRIALS = 8
pytestmark = pytest.mark.slow


def _start(**fields: Any) -> Msg:
    params = common_pb2.GenerationParams(prompt="a blue square", **{"num_images": 2, "steps": 6, "seed": 5,
                                                                    "preview_every": 1, **fields})
    return Msg(start=gateway_pb2.SessionStart(params=params))


async def _until(call: Any, kind: str, round_number: int | None = None) -> list[gateway_pb2.SessionEvent]:
    seen = []
    while True:
        event = await asyncio.wait_for(call.read(), 60)
        assert event is not aio.EOF, f"ended before {kind}: {[e.WhichOneof('event') for e in seen]}"
        seen.append(event)
        if event.WhichOneof("event") == kind and (round_number is None or event.round == round_number):
            return seen


async def _events(stub: Any, session_id: str) -> list[gateway_pb2.SessionEvent]:
    """The session's whole event stream (it has ended), through Subscribe."""
    call = stub.Subscribe(gateway_pb2.SubscribeRequest(session_id=session_id), timeout=30)
    return [e.session async for e in call]


async def _round_one(stub: Any) -> tuple[Any, str, str]:
    call = stub.Session()
    await call.write(_start())
    first = await _until(call, "round_images", 1)
    return call, first[0].session_id, first[-1].round_images.images[0].image.id


async def test_cancel_racing_a_finishing_round_always_ends_cancelled() -> None:
    async with deployment(replicas=2) as (a, b):
        (ca, sa), (cb, sb) = gateway(a["gateway"]), gateway(b["gateway"])
        rng = random.Random(7)
        try:
            call, _, liked = await _round_one(sa)  # how long round 2 takes here, to aim the cancels at its end
            began = time.perf_counter()
            await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[liked])))
            await _until(call, "round_images", 2)
            round_s = time.perf_counter() - began
            call.cancel()
            outcomes = []
            for _ in range(TRIALS):
                call, session_id, liked = await _round_one(sa)
                await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[liked])))
                await asyncio.sleep(rng.uniform(0.5, 1.3) * round_s)  # round 2 (on replica A) finishing, or done
                other = sb.Session()
                await other.write(Msg(resume=gateway_pb2.SessionResume(session_id=session_id)))
                await other.write(Msg(cancel=gateway_pb2.SessionCancel()))
                await _until(other, "cancelled")
                await asyncio.sleep(1.0)  # whatever replica A was doing has ended by now
                for stub in (sa, sb):
                    snap = await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
                    assert snap.phase == gateway_pb2.SESSION_PHASE_CANCELLED, snap.phase
                kinds = [e.WhichOneof("event") for e in await _events(sb, session_id)]
                assert kinds[-1] == "cancelled" and kinds.count("cancelled") == 1, kinds
                outcomes.append("after round 2" if kinds.count("round_images") == 2 else "during round 2")
                call.cancel()
                other.cancel()
            print(f"round 2 takes {round_s:.2f} s; the cancel landed {outcomes}")
        finally:
            await ca.close()
            await cb.close()


async def test_two_feedbacks_racing_through_two_replicas_start_exactly_one_round() -> None:
    async with deployment(replicas=2) as (a, b):
        (ca, sa), (cb, sb) = gateway(a["gateway"]), gateway(b["gateway"])
        try:
            for _ in range(TRIALS):
                starter = sa.Session()
                await starter.write(_start())
                first = await _until(starter, "round_images", 1)
                session_id, images = first[0].session_id, first[-1].round_images.images
                calls = [stub.Session() for stub in (sa, sb)]
                for call in calls:
                    await call.write(Msg(resume=gateway_pb2.SessionResume(session_id=session_id)))
                    await _until(call, "snapshot")
                await asyncio.gather(*[  # the same moment, through both replicas
                    call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[images[k].image.id])))
                    for k, call in enumerate(calls)])
                results = await asyncio.gather(*[_round_or_error(call) for call in calls])
                assert sorted(results, key=str) == sorted(["round 2", grpc.StatusCode.FAILED_PRECONDITION], key=str), \
                    results
                kinds = [(e.WhichOneof("event"), e.round) for e in await _stream_now(sb, session_id)]
                assert kinds.count(("round_started", 2)) == 1 and ("round_started", 3) not in kinds, kinds
                for call in (starter, *calls):
                    call.cancel()
                await sa.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
        finally:
            await ca.close()
            await cb.close()


async def _round_or_error(call: Any) -> object:
    try:
        await _until(call, "round_images", 2)
        return "round 2"
    except aio.AioRpcError as exc:
        return exc.code()


async def _stream_now(stub: Any, session_id: str) -> list[gateway_pb2.SessionEvent]:
    """The events so far of a session that goes on (Subscribe cut after a quiet moment)."""
    call = stub.Subscribe(gateway_pb2.SubscribeRequest(session_id=session_id))
    seen = []
    try:
        while True:
            seen.append((await asyncio.wait_for(call.read(), 1.5)).session)
    except TimeoutError:
        return seen
    finally:
        call.cancel()


async def test_a_round_waiting_in_a_queue_is_not_declared_stale_by_the_other_replica() -> None:
    stale_s = 1.0
    async with deployment(replicas=2, session_stale_s=stale_s, max_batch=1) as (a, b):
        (ca, sa), (cb, sb) = gateway(a["gateway"]), gateway(b["gateway"])
        try:
            blocker = sa.Generate()  # a long job ahead of the round in the generator's queue
            await blocker.write(generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(
                params=common_pb2.GenerationParams(prompt="a long job", num_images=8, steps=40, seed=1))))
            while (await asyncio.wait_for(blocker.read(), 60)).WhichOneof("event") != "progress":
                pass
            call = sa.Session()
            await call.write(_start())
            session_id = (await _until(call, "snapshot"))[0].session_id
            began, failed = time.perf_counter(), []
            done = asyncio.create_task(_until(call, "round_images", 1))
            while not done.done():  # the other replica looks, as a client reconnecting there would
                snap = await sb.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
                if snap.phase == gateway_pb2.SESSION_PHASE_AWAITING_FEEDBACK and not snap.rounds:
                    failed.append(time.perf_counter() - began)
                await asyncio.sleep(0.25)
            events = await done
            waited = time.perf_counter() - began
            assert not failed, f"declared stale after {failed[0]:.1f} s"
            assert "error" not in [e.WhichOneof("event") for e in events]
            assert waited > 3 * stale_s, f"the round waited only {waited:.1f} s: make the blocker longer"
            print(f"the round waited {waited:.1f} s in the queue ({waited / stale_s:.1f}x the stale time)")
            blocker.cancel()
            call.cancel()
        finally:
            await ca.close()
            await cb.close()
