"""The HTTP edge's route table: each route's method, path, messages and handler, in one place.

Starlette routes and the OpenAPI document are both made from it, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from philip.rpc.errors import InvalidArgument
from philip.store.base import parse_stream_id
from services.gateway.core import GatewayCore
from services.gateway.http.idempotency import Idempotency

Handler = Callable[[Request], Awaitable[Response]]
UPSTREAM_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    # What the body is and what a success answers (None: no JSON body / answer).
    request: type[Message] | None = None
    response: type[Message] | None = None
    status: int = 200
    kind: str = "json"  # json | sse | png | multipart
    stream_of: type[Message] | None = None  # sse: the message each event carries
    query: tuple[str, ...] = ()
    idempotent_create: bool = False
    errors: tuple[int, ...] = field(default=(400, 401, 404, 429, 503))


@dataclass
class EdgeState:
    """What every handler shares: the domain, idempotency, and whether the process is draining."""

    core: GatewayCore
    idempotency: Idempotency
    max_upload_bytes: int
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    ready: bool = False


def page_query(request: Request) -> tuple[int, str]:
    """``pageSize`` / ``pageToken`` (snake_case accepted too) from the query string."""
    raw = request.query_params.get("pageSize", request.query_params.get("page_size", "0"))
    try:
        size = int(raw)
    except ValueError:
        raise InvalidArgument(f"pageSize must be an integer, got {raw!r}", field="pageSize") from None
    return size, request.query_params.get("pageToken", request.query_params.get("page_token", ""))


def last_event_id(request: Request, *, stream_ids: bool = True) -> str:
    """The ``Last-Event-ID`` header (or ``lastEventId`` query parameter); "0-0" / "0" when absent."""
    raw = request.headers.get("last-event-id", request.query_params.get("lastEventId", "")).strip()
    if not raw:
        return "0-0" if stream_ids else "0"
    try:
        if stream_ids:
            parse_stream_id(raw)
        elif not raw.isdigit():
            raise ValueError(raw)
    except ValueError:
        want = "a stream id such as 1712345678901-0" if stream_ids else "an event number"
        raise InvalidArgument(f"Last-Event-ID must be {want} from this stream, got {raw[:40]!r}",
                              field="Last-Event-ID") from None
    return raw


def request_id(request: Request) -> str:
    """The id the edge middleware gave this request (echoed as X-Request-Id and in every log line)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


__all__ = ["UPSTREAM_TIMEOUT_S", "ApiRoute", "EdgeState", "Handler", "last_event_id", "page_query", "request_id"]
