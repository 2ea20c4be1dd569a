"""A Session client that stops reading costs the gateway a bounded amount (issue 22, item 2).

Real gRPC and Redis; the rounds come from an upstream that sends a 1 MB preview every step, so three
rounds make 120 MB of previews. Before, the Session stream drained its reader's buffer into an unbounded
queue of its own and the gateway held all of them; now it pulls events as the client reads, previews
are coalesced in the bounded buffer, and the client later gets every round's images.
"""

from __future__ import annotations

import asyncio
import os
import resource
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest
from grpc import aio

from philip.exploration import RoundChoice, SessionDefaults, SlotConstraints
from philip.feedback_weights import builtin_weights
from philip.generation.requests import GenerationParams
from philip.rpc.server import GrpcServer
from philip.settings import Settings
from philip.store import RedisStore
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, generator_pb2_grpc
from services.gateway import codec
from services.gateway.core import GatewayCore
from services.gateway.generations import DetachedGenerations
from services.gateway.server import build
from services.gateway.session_events import (
    Compute,
    NoiseTrace,
    Picture,
    PreviewPictures,
    RoundEvent,
    RoundOutput,
    SessionImage,
    StepProgress,
    UpscaleEvent,
)
from services.gateway.sessions import SessionManager
from tests.http.support import drop_redis_keys
from tests.reliability.support import REDIS_URL

STEPS, IMAGES, ROUNDS = 40, 4, 3
PREVIEW_BYTES = 1 << 20  # per step, over its images
BOUND_MB = 60  # the gateway's peak RSS growth while the client reads nothing (120 MB of previews sent)
pytestmark = pytest.mark.slow


class BigPreviews:
    """Rounds of STEPS steps, each with a 1 MB preview (random bytes: the codec only carries them)."""

    async def _round(self, round_id: str) -> AsyncGenerator[RoundEvent, None]:
        for step in range(1, STEPS + 1):
            yield StepProgress(step, STEPS)
            yield PreviewPictures(step, tuple(Picture(os.urandom(PREVIEW_BYTES // IMAGES), 64, 64)
                                              for _ in range(IMAGES)))
            await asyncio.sleep(0.01)
        images = tuple(SessionImage(f"{round_id}-{i}", 0, i, i, Picture(b"png", 64, 64), NoiseTrace(i))
                       for i in range(IMAGES))
        yield RoundOutput(images, Compute(STEPS, STEPS * IMAGES))

    def plain_round(self, params: GenerationParams, round_id: str) -> AsyncGenerator[RoundEvent, None]:
        return self._round(round_id)

    def feedback_round(self, params: GenerationParams, round_id: str, liked: Sequence[SessionImage],
                       disliked: Sequence[SessionImage], weights: dict[str, float],
                       history: Sequence[RoundChoice] = (),
                       constraints: SlotConstraints = SlotConstraints()) -> AsyncGenerator[RoundEvent, None]:
        return self._round(round_id)

    async def defaults(self) -> SessionDefaults:
        return SessionDefaults(builtin_weights())

    async def upscale(self, picture: Picture, scale: int) -> AsyncIterator[UpscaleEvent]:
        raise NotImplementedError
        yield  # pragma: no cover


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_a_session_client_that_reads_nothing_costs_a_bounded_amount() -> None:
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0)
    if not await store.ping():
        pytest.skip("Redis not reachable")
    sessions = SessionManager(store, BigPreviews(), encode_event=codec.encode_event, ttl_s=600)
    idle_channel = aio.insecure_channel("127.0.0.1:1")  # the generator stub is never called here
    stub = generator_pb2_grpc.GeneratorServiceStub(idle_channel)
    core = GatewayCore(store, sessions, stub, DetachedGenerations(stub, sessions.quotas), {})
    server = GrpcServer(Settings(port=0, host="127.0.0.1", max_message_mb=8), build(core))
    await server.start()
    options = [("grpc.max_receive_message_length", 8 << 20)]
    reader_channel = aio.insecure_channel(f"127.0.0.1:{server.port}", options=options)
    poll_channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        call = gateway_pb2_grpc.GatewayStub(reader_channel).Session()
        poll = gateway_pb2_grpc.GatewayStub(poll_channel)
        params = common_pb2.GenerationParams(prompt="big previews", num_images=IMAGES, steps=STEPS, preview_every=1)
        await call.write(gateway_pb2.SessionClientMessage(start=gateway_pb2.SessionStart(params=params)))
        session_id = ""
        while not session_id:
            session_id = next(iter(sessions._tasks), "")  # the round task exists once start has run
            await asyncio.sleep(0.01)
        before = _peak_rss_mb()
        for number in range(1, ROUNDS + 1):  # the client writes its feedback but reads nothing
            snap = await _round_done(poll, session_id, number)
            if number < ROUNDS:
                liked = snap.rounds[-1].images[0].image.id
                await call.write(gateway_pb2.SessionClientMessage(
                    feedback=gateway_pb2.SessionFeedback(liked_image_ids=[liked])))
        growth = _peak_rss_mb() - before
        print(f"peak RSS growth {growth:.1f} MB while {ROUNDS * STEPS} previews of 1 MB went unread")
        assert growth < BOUND_MB, f"the gateway grew {growth:.0f} MB for a client that reads nothing"

        rounds_seen: list[int] = []
        while len(rounds_seen) < ROUNDS:
            event = await asyncio.wait_for(call.read(), 30)
            assert event is not aio.EOF
            if event.WhichOneof("event") == "round_images":
                rounds_seen.append(event.round)
        assert rounds_seen == [1, 2, 3]
        call.cancel()
    finally:
        await reader_channel.close()
        await poll_channel.close()
        await idle_channel.close()
        await server.stop(0)
        await sessions.close()
        await store.close()
        await drop_redis_keys(prefix)


async def _round_done(poll: gateway_pb2_grpc.GatewayStub, session_id: str, number: int) -> gateway_pb2.SessionSnapshot:
    for _ in range(600):
        snap = await poll.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
        if len(snap.rounds) == number and snap.phase == gateway_pb2.SESSION_PHASE_AWAITING_FEEDBACK:
            return snap
        await asyncio.sleep(0.05)
    raise AssertionError(f"round {number} did not finish")
