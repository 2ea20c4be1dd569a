"""A client of the gateway's Session stream: rounds, feedback, finalize, as plain awaitables.

    async with SessionClient.start(stub, params) as session:
        first = await session.next_round()                     # images of round 1
        second = await session.feedback([first.images[0].image.id], [])
        final = await session.finalize(second.images[2].image.id)

``on_event`` sees every event (progress, previews, ...) for progress bars. An ``error`` event of
this client's own step raises :class:`SessionError`; the stream stays usable for another try.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from grpc import aio

from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, refiner_pb2

Msg = gateway_pb2.SessionClientMessage
EventHook = Callable[[gateway_pb2.SessionEvent], None]


class SessionError(Exception):
    """A step of the session failed (the stream is still open): ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Round:
    number: int
    images: list[refiner_pb2.RoundImage]
    compute: refiner_pb2.RoundCompute
    previews: int = 0  # preview events seen for this round
    learned: list[refiner_pb2.SlotBelief] = field(default_factory=list)  # what exploration believed, per slot

    @classmethod
    def from_pb(cls, done: gateway_pb2.RoundImages) -> Round:
        return cls(done.round, list(done.images), done.compute, learned=list(done.learned))


@dataclass
class SessionClient:
    call: Any  # aio.StreamStreamCall
    on_event: EventHook | None = None
    session_id: str = ""
    snapshot: gateway_pb2.SessionSnapshot | None = None
    rounds: list[Round] = field(default_factory=list)

    @classmethod
    async def start(cls, stub: gateway_pb2_grpc.GatewayStub, params: common_pb2.GenerationParams, *,
                    weights: refiner_pb2.FeedbackWeights | None = None, on_event: EventHook | None = None,
                    timeout_s: float | None = None) -> SessionClient:
        """Open a Session stream and start a session (round 1 begins at once)."""
        client = cls(stub.Session(timeout=timeout_s), on_event)
        await client.call.write(Msg(start=gateway_pb2.SessionStart(params=params, weights=weights)))
        await client._read_snapshot()
        return client

    @classmethod
    async def resume(cls, stub: gateway_pb2_grpc.GatewayStub, session_id: str, *,
                     on_event: EventHook | None = None, timeout_s: float | None = None) -> SessionClient:
        client = cls(stub.Session(timeout=timeout_s), on_event)
        await client.call.write(Msg(resume=gateway_pb2.SessionResume(session_id=session_id)))
        await client._read_snapshot()
        return client

    async def __aenter__(self) -> SessionClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave the session as it is (it stays resumable) and close the stream."""
        self.call.cancel()

    async def next_round(self) -> Round:
        """Wait for the images of the round that is running."""
        previews = 0
        while True:
            event = await self._read()
            kind = event.WhichOneof("event")
            if kind == "preview":
                previews += 1
            elif kind == "round_images":
                done = Round(event.round, list(event.round_images.images), event.round_images.compute, previews,
                             list(event.round_images.learned))
                self.rounds.append(done)
                return done

    async def feedback(self, liked: Sequence[str], disliked: Sequence[str], prompt: str | None = None,
                       constraints: refiner_pb2.SlotConstraints | None = None) -> Round:
        """Like/dislike image ids (of any round so far) and wait for the next round; ``constraints`` replace the
        session's pins and bans (None keeps them)."""
        message = gateway_pb2.SessionFeedback(liked_image_ids=list(liked), disliked_image_ids=list(disliked))
        if prompt is not None:
            message.prompt = prompt
        if constraints is not None:
            message.constraints.CopyFrom(constraints)
        await self.call.write(Msg(feedback=message))
        return await self.next_round()

    async def finalize(self, image_id: str, scale: int = 0) -> gateway_pb2.SessionFinal:
        """Choose an image; waits for the upscaled PNG (the session then ends)."""
        await self.call.write(Msg(finalize=gateway_pb2.SessionFinalize(image_id=image_id, scale=scale)))
        return await self.wait_final()

    async def wait_final(self) -> gateway_pb2.SessionFinal:
        """Wait for the upscaled PNG of the image already chosen."""
        while True:
            event = await self._read()
            if event.WhichOneof("event") == "final":
                return event.final

    async def cancel(self) -> None:
        await self.call.write(Msg(cancel=gateway_pb2.SessionCancel()))
        while (await self._read()).WhichOneof("event") != "cancelled":
            pass

    async def _read_snapshot(self) -> None:
        event = await self._read()
        self.session_id = event.session_id
        self.snapshot = event.snapshot

    async def _read(self) -> gateway_pb2.SessionEvent:
        event = await self.call.read()
        if event is aio.EOF:
            raise SessionError("UNAVAILABLE", "the session stream ended")
        if self.on_event is not None:
            self.on_event(event)
        if event.WhichOneof("event") == "error":
            raise SessionError(event.error.code, event.error.message)
        return event
