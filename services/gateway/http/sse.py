"""Server-Sent Events: one event per server message, resumable by ``Last-Event-ID``, with heartbeats.

The caller hands in ``(id, message)`` pairs already read through a per-subscriber bounded buffer
(``fanout.buffered``), so a slow HTTP reader costs what a slow gRPC reader costs: its previews and
progress ticks are coalesced, round images, finals and errors never. Each event is
``id: <id>`` / ``event: <the message's oneof name>`` / ``data: <canonical JSON>``; a comment line
every ``heartbeat_s`` keeps proxies from closing an idle stream. A failure after the answer began
(the store went away) ends the stream with an ``event: stream_error`` carrying a google.rpc.Status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import cast

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from philip.stream_limits import StreamSlot
from services.gateway.http.errors import status_of
from services.gateway.http.protojson import dumps

HEARTBEAT_S = 15.0
RETRY_MS = 2000  # what a browser's EventSource waits before it reconnects
_END = object()
_TICK_S = 0.5  # how often a waiting stream looks at the shutdown flag


def frame(event_id: str, message: Message) -> str:
    name = message.WhichOneof("event") or "message"
    return f"id: {event_id}\nevent: {name}\ndata: {dumps(message)}\n\n"


async def event_frames(items: AsyncIterator[tuple[str, Message]], *, closing: asyncio.Event,
                       request_id: str, heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[str]:
    """SSE text for ``items``; ends when they end, when ``closing`` is set, or on an error frame."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)  # the bounded buffer sits upstream

    async def pump() -> None:
        try:
            async for item in items:
                await queue.put(item)
            await queue.put(_END)
        except Exception as exc:
            await queue.put(exc)

    task = asyncio.get_running_loop().create_task(pump(), name="sse-pump")
    try:
        yield f"retry: {RETRY_MS}\n\n"
        idle = 0.0
        while not closing.is_set():
            try:
                item = await asyncio.wait_for(queue.get(), _TICK_S)
            except TimeoutError:
                idle += _TICK_S
                if idle >= heartbeat_s:
                    idle = 0.0
                    yield ": heartbeat\n\n"
                continue
            idle = 0.0
            if item is _END:
                return
            if isinstance(item, BaseException):
                status = json_format.MessageToDict(status_of(item, request_id))
                yield f"event: stream_error\ndata: {json.dumps(status, separators=(',', ':'))}\n\n"
                return
            event_id, message = cast(tuple[str, Message], item)
            yield frame(event_id, message)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def sse_response(frames: AsyncIterator[str], slot: StreamSlot) -> StreamingResponse:
    """The event stream as a response that holds ``slot`` (PHILIP_MAX_STREAMS) until it ends."""

    async def holding() -> AsyncIterator[str]:
        try:
            async for text in frames:
                yield text
        finally:
            slot.release()

    # The background task frees the slot too when the client left before the body started.
    return StreamingResponse(holding(), media_type="text/event-stream", background=BackgroundTask(slot.release),
                             headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no",
                                      "Connection": "keep-alive"})


__all__ = ["HEARTBEAT_S", "event_frames", "frame", "sse_response"]
