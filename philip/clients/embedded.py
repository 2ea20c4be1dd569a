"""A gateway to talk to: the one at an address, or `philip serve all` started in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from philip.v1 import gateway_pb2_grpc


@contextlib.asynccontextmanager
async def gateway_stub(gateway: str | None = None, *, settings: Any = None,
                       store: Any = None) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    """Yield a Gateway stub for ``gateway`` (host:port), or for in-process services (`serve all` with
    ``settings``, default from PHILIP_* on an ephemeral loopback port), stopped gracefully on exit."""
    from philip.rpc.auth import client_interceptors
    from philip.rpc.client import make_channel
    from services.gateway.server import SERVICE_NAME

    if gateway is not None:
        channel = make_channel(gateway, [SERVICE_NAME], interceptors=client_interceptors())
        try:
            yield gateway_pb2_grpc.GatewayStub(channel)
        finally:
            await channel.close()
        return

    from philip.settings import Settings
    from services.app import serve

    settings = settings or Settings.from_env(port=0, http_port=0, host="127.0.0.1")
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve("all", settings, store=store, stop=stop, on_ready=ready.set_result))
    try:
        while not ready.done():
            if server.done():
                server.result()  # raises what stopped it
                raise RuntimeError("the services stopped before serving")
            await asyncio.sleep(0.05)
        channel = make_channel(ready.result()["gateway"], [SERVICE_NAME], interceptors=client_interceptors())
        try:
            yield gateway_pb2_grpc.GatewayStub(channel)
        finally:
            await channel.close()
    finally:
        stop.set()
        await server
