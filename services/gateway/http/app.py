"""The HTTP edge as an ASGI app: the route table, auth, request ids, security headers, CORS, the studio.

Auth is the gRPC edge's: ``Authorization: Bearer <key>`` looked up in the same API keys, the tenant
set in the same context variable for the whole request (streamed answers included), so the domain
objects scope everything exactly as they do for gRPC.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from philip.logs import bind_ids, get_logger
from philip.rpc.auth import ApiKeys, acting_as
from philip.rpc.errors import Unauthenticated
from services.gateway.http.adapter_routes import adapter_routes
from services.gateway.http.api import ApiRoute, EdgeState, Handler, request_id
from services.gateway.http.errors import error_body, error_response
from services.gateway.http.job_routes import job_routes
from services.gateway.http.misc_routes import healthz, misc_routes, readyz
from services.gateway.http.openapi import docs_page, document
from services.gateway.http.session_routes import session_routes

log = get_logger("services.gateway.http")

STUDIO_DIR = Path(__file__).resolve().parent.parent / "studio"
STUDIO_PAGES = ("/", "/s/{session_id}", "/v/{session_id}", "/gallery", "/adapters")
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def api_routes(state: EdgeState) -> list[ApiRoute]:
    return [*session_routes(state), *job_routes(state), *adapter_routes(state), *misc_routes(state)]


def build_app(state: EdgeState, keys: ApiKeys | None, cors_origins: tuple[str, ...] = ()) -> Starlette:
    table = api_routes(state)
    doc = document(table, _version())
    routes: list[BaseRoute] = [Route(r.path, _guarded(r.handler), methods=[r.method]) for r in table]
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz(state), methods=["GET"]),
        Route("/openapi.json", _constant(JSONResponse(doc)), methods=["GET"]),
        Route("/docs", _constant(HTMLResponse(docs_page(doc))), methods=["GET"]),
        *(Route(page, _studio_page, methods=["GET"]) for page in STUDIO_PAGES),
        Mount("/static", StaticFiles(directory=STUDIO_DIR, check_dir=False), name="static"),
    ]
    middleware = [Middleware(EdgeMiddleware, keys=keys)]
    if cors_origins:  # outermost: a preflight carries no Authorization and must not meet the key check
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_credentials=False,
                                     allow_methods=["GET", "POST", "DELETE"],
                                     allow_headers=["authorization", "content-type", "idempotency-key",
                                                    "last-event-id", "x-request-id"],
                                     expose_headers=["retry-after", "x-request-id", "idempotency-replayed"]))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _router_error})
    app.state.routes = table
    return app


def _guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Every API handler's errors become google.rpc.Status answers (the gRPC interceptor's job there)."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return error_response(exc, request_id(request))

    return endpoint


async def _router_error(request: Request, exc: Exception) -> Response:
    """The router's own answers (no such route, another method) are google.rpc.Status bodies too."""
    assert isinstance(exc, HTTPException)
    code, message = {
        404: ("NOT_FOUND", f"no route {request.url.path}; see /openapi.json"),
        405: ("UNIMPLEMENTED", f"{request.method} is not allowed on {request.url.path}; see /openapi.json"),
    }.get(exc.status_code, ("INVALID_ARGUMENT", str(exc.detail)))
    return JSONResponse(json_format.MessageToDict(error_body(code, message)), exc.status_code, headers=exc.headers)


def _constant(response: Response) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return response

    return endpoint


async def _studio_page(request: Request) -> Response:
    index = STUDIO_DIR / "index.html"
    if not index.exists():
        return JSONResponse({"message": "the studio's files are not installed"}, 404)
    return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})


class EdgeMiddleware:
    """Request id, tenant from the API key (for /v1/ paths), security headers, one log line per request."""

    def __init__(self, app: ASGIApp, keys: ApiKeys | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started, status = time.perf_counter(), [0]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS,
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        with bind_ids(request_id=rid):
            try:
                tenant = self._tenant(scope["path"], headers.get("authorization", ""))
            except Unauthenticated as exc:
                await error_response(exc, rid)(scope, receive, send_with_headers)
            else:
                with acting_as(tenant):
                    await self.app(scope, receive, send_with_headers)
            path = scope["path"]
            emit = log.debug if path in ("/healthz", "/readyz") or path.startswith("/static/") else log.info
            emit("http.finished", method=scope["method"], path=path, status=status[0],
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))

    def _tenant(self, path: str, authorization: str) -> str:
        if self.keys is None or not path.startswith("/v1/"):
            return ""
        key = authorization[len("Bearer "):].strip() if authorization.startswith("Bearer ") else ""
        tenant = self.keys.tenant_for(key)
        if tenant is None:
            raise Unauthenticated("missing or unknown API key; send `Authorization: Bearer <key>`")
        return tenant


def _version() -> str:
    try:
        return package_metadata.version("philip")
    except package_metadata.PackageNotFoundError:
        return "0.0.0"


def route_table(app: Any) -> list[ApiRoute]:
    return list(app.state.routes)


__all__ = ["STUDIO_DIR", "build_app", "route_table"]
