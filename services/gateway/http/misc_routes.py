"""HTTP routes of the activity log, the style presets and the served model, and the health endpoints."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from philip.store import StoreError
from philip.v1 import gateway_pb2, generator_pb2
from services.gateway import codec
from services.gateway.http.api import ApiRoute, EdgeState, page_query
from services.gateway.http.protojson import ProtoResponse

READY_STORE_TIMEOUT_S = 2.0


def misc_routes(state: EdgeState) -> list[ApiRoute]:
    core = state.core

    async def activity(request: Request) -> Response:
        entries, token = await core.sessions.activity.page(*page_query(request))
        return ProtoResponse(gateway_pb2.ListActivityResponse(entries=[codec.activity_to_pb(e) for e in entries],
                                                              next_page_token=token))

    async def styles(request: Request) -> Response:
        return ProtoResponse(codec.styles_to_pb(core.styles))

    async def model(request: Request) -> Response:
        return ProtoResponse(await core.model_info())

    return [
        ApiRoute("GET", "/v1/activity", activity, "The tenant's activity log, newest first", "activity",
                 None, gateway_pb2.ListActivityResponse, query=("pageSize", "pageToken")),
        ApiRoute("GET", "/v1/styles", styles, "The style presets GenerationParams.style can name", "styles",
                 None, gateway_pb2.ListStylesResponse),
        ApiRoute("GET", "/v1/model", model, "The served model: family, defaults and ranges, schedulers, what "
                 "feedback acts through, adapter methods, preview kinds", "model", None, generator_pb2.ModelInfo),
    ]


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


def readyz(state: EdgeState):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        """Readiness: serving (not starting or draining) and the store answers."""
        if not state.ready or state.closing.is_set():
            return JSONResponse({"status": "draining" if state.closing.is_set() else "starting"}, 503)
        try:
            async with asyncio.timeout(READY_STORE_TIMEOUT_S):
                await core_ping(state)
        except (TimeoutError, StoreError) as exc:
            return JSONResponse({"status": "store unavailable", "error": str(exc)}, 503)
        return JSONResponse({"status": "ok"})

    return handler


async def core_ping(state: EdgeState) -> None:
    if not await state.core.store.ping():
        raise StoreError("the store did not answer PING")


__all__ = ["healthz", "misc_routes", "readyz"]
