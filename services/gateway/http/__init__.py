"""The gateway's HTTP/JSON + Server-Sent Events edge and the studio (docs/HTTP.md)."""

from __future__ import annotations

from philip.rpc.auth import ApiKeys
from philip.settings import Settings
from services.gateway.core import GatewayCore
from services.gateway.http.api import EdgeState
from services.gateway.http.app import build_app
from services.gateway.http.idempotency import Idempotency
from services.gateway.http.server import HttpEdge


def open_http_edge(settings: Settings, core: GatewayCore, keys: ApiKeys | None) -> HttpEdge:
    """The edge on ``settings.server.host`` : ``settings.http.http_port``, over the gRPC servicer's domain objects."""
    state = EdgeState(core, Idempotency(core.store), max_upload_bytes=settings.server.max_message_mb * 1024 * 1024)
    app = build_app(state, keys, settings.http.http_cors_origins)
    return HttpEdge(app, state, settings.server.host, settings.http.http_port, settings.server.grace_s)


__all__ = ["HttpEdge", "open_http_edge"]
