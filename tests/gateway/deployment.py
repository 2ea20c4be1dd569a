"""`serve("all")` with an API keys file of several tenants, for the tenant-facing gRPC tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from grpc import aio

from philip.clients.generate import gateway_channel
from philip.rpc.auth import add_key
from philip.settings import Settings
from philip.store import Store
from philip.v1 import gateway_pb2_grpc
from services.app import serve
from tests.personalizer.conftest import MODEL, UPSCALER


class Deployment:
    def __init__(self, address: str, keys: dict[str, str], addresses: dict[str, str] | None = None,
                 keys_file: Path | None = None) -> None:
        self.address = address
        self.keys = keys
        self.keys_file = keys_file
        self.addresses = addresses or {"gateway": address}  # every bound address ("http" with an HTTP port)

    def channel(self, tenant: str | None) -> aio.Channel:
        return gateway_channel(self.address, self.keys[tenant] if tenant else None)

    def stub(self, tenant: str) -> tuple[aio.Channel, gateway_pb2_grpc.GatewayStub]:
        channel = self.channel(tenant)
        return channel, gateway_pb2_grpc.GatewayStub(channel)


@contextlib.asynccontextmanager
async def deployed(folder: Path, tenants: tuple[str, ...], *, store: Store | None = None,
                   **settings: Any) -> AsyncIterator[Deployment]:
    """The services on loopback, a key per tenant in ``folder/keys.json``; stopped gracefully after."""
    keys = {tenant: add_key(folder / "keys.json", tenant) for tenant in tenants}
    defaults: dict[str, Any] = dict(model_dir=str(MODEL), upscaler_path=str(UPSCALER), port=0, http_port=0, threads=1,
                                    grace_s=0.5, adapters_dir=str(folder / "adapters"),
                                    api_keys_file=str(folder / "keys.json"))
    config = Settings(**{**defaults, **settings})  # ``settings`` may override a default (http_port=...)
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("all", config, store=store, stop=stop, on_ready=ready.set_result))
    addresses = await asyncio.wait_for(asyncio.shield(ready), 120)
    try:
        yield Deployment(addresses["gateway"], keys, addresses, folder / "keys.json")
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
