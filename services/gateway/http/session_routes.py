"""HTTP routes of sessions: the same SessionManager calls as the gRPC ``Session`` stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from philip.v1 import gateway_pb2
from services.gateway import codec
from services.gateway.fanout import buffered
from services.gateway.http.api import ApiRoute, EdgeState, last_event_id, page_query, request_id
from services.gateway.http.protojson import ProtoResponse, parse, read_body
from services.gateway.http.sse import event_frames, sse_response

SUBSCRIBER_BUFFER = 16


class _SessionRoutes:
    """The handlers of ``session_routes``: plain methods over the edge's domain objects."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state
        self.sessions = state.core.sessions

    async def snapshot(self, session_id: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return ProtoResponse(codec.snapshot_to_pb(await self.sessions.snapshot(session_id)), status, headers)

    async def start(self, request: Request) -> Response:
        body = await read_body(request)

        async def work() -> Response:
            message = parse(body, gateway_pb2.SessionStart)
            session_id = await self.sessions.start(**await codec.start_from_pb(message))
            return await self.snapshot(session_id, 201, {"Location": f"/v1/sessions/{session_id}"})

        return await self.state.idempotency.run(request.headers.get("idempotency-key"), "sessions", body, work)

    async def list_sessions(self, request: Request) -> Response:
        summaries, token = await self.sessions.index.page(*page_query(request))
        return ProtoResponse(gateway_pb2.ListSessionsResponse(
            sessions=[codec.summary_to_pb(s) for s in summaries], next_page_token=token))

    async def get(self, request: Request) -> Response:
        return await self.snapshot(request.path_params["session_id"])

    async def feedback(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        fb = parse(await read_body(request), gateway_pb2.SessionFeedback)
        await self.sessions.feedback(session_id, **await codec.feedback_from_pb(fb))
        return await self.snapshot(session_id)

    async def finalize(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        message = parse(await read_body(request), gateway_pb2.SessionFinalize)
        await self.sessions.finalize(session_id, message.image_id, message.scale)
        return await self.snapshot(session_id, 202)

    async def cancel(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        parse(await read_body(request), gateway_pb2.SessionCancel)
        await self.sessions.cancel(session_id)
        return await self.snapshot(session_id)

    async def events(self, request: Request) -> Response:
        session_id, after = request.path_params["session_id"], last_event_id(request)
        await self.sessions.visible(session_id)  # a 404 now, not a stream that fails

        async def items() -> AsyncIterator[tuple[str, Message]]:
            entries = buffered(self.sessions.follow_entries(session_id, after),
                               lambda e: codec.session_droppable(e.payload), SUBSCRIBER_BUFFER)
            async for entry in entries:
                yield entry.id, gateway_pb2.SessionEvent.FromString(entry.payload)

        return sse_response(event_frames(items(), closing=self.state.closing, request_id=request_id(request)),
                            self.state.core.open_stream())



def session_routes(state: EdgeState) -> list[ApiRoute]:
    r = _SessionRoutes(state)
    one = "/v1/sessions/{session_id}"
    return [
        ApiRoute("POST", "/v1/sessions", r.start, "Start a session (round 1 starts at once)", "sessions",
                 gateway_pb2.SessionStart, gateway_pb2.SessionSnapshot, 201, idempotent_create=True),
        ApiRoute("GET", "/v1/sessions", r.list_sessions, "The tenant's sessions, newest first", "sessions",
                 None, gateway_pb2.ListSessionsResponse, query=("pageSize", "pageToken")),
        ApiRoute("GET", one, r.get, "A session's state", "sessions", None, gateway_pb2.SessionSnapshot),
        ApiRoute("POST", f"{one}/feedback", r.feedback, "Like and dislike images; starts the next round", "sessions",
                 gateway_pb2.SessionFeedback, gateway_pb2.SessionSnapshot, errors=(400, 401, 404, 409, 429, 503)),
        ApiRoute("POST", f"{one}/finalize", r.finalize, "Choose an image and upscale it; ends the session",
                 "sessions", gateway_pb2.SessionFinalize, gateway_pb2.SessionSnapshot, 202,
                 errors=(400, 401, 404, 409, 429, 503)),
        ApiRoute("POST", f"{one}/cancel", r.cancel, "End the session (a running round stops within a step)",
                 "sessions", gateway_pb2.SessionCancel, gateway_pb2.SessionSnapshot),
        ApiRoute("GET", f"{one}/events", r.events, "The session's events (SSE): replay, then live, until it ends",
                 "sessions", kind="sse", stream_of=gateway_pb2.SessionEvent),
    ]


__all__ = ["session_routes"]
