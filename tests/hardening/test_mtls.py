"""mTLS between services, with self-signed certificates on loopback.

An internal server with PHILIP_TLS_* set answers only clients whose certificate its CA signed
(none, a foreign CA's or plaintext: refused); its plaintext health port answers health checks and
nothing else; and a gateway with a client certificate runs a generation on a generator and a
refiner that require one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from philip.clients.generate import gateway_channel, stream_generation
from philip.rpc.server import GrpcServer
from philip.rpc.tls import channel_credentials, server_credentials
from philip.settings import Settings
from philip.v1 import common_pb2, gateway_pb2_grpc
from services.app import serve
from tests.hardening.certs import Certs, Pair, make_certs
from tests.personalizer.conftest import MODEL, UPSCALER


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls(certs: Certs, pair: Pair, **more: object) -> Settings:
    return Settings(host="127.0.0.1", port=0, http_port=0, tls_cert=str(pair.cert), tls_key=str(pair.key),
                    tls_ca=str(certs.ca), **more)  # type: ignore[arg-type]


@pytest.fixture
async def server(certs: Certs) -> AsyncIterator[GrpcServer]:
    settings = tls(certs, certs.server, health_port=0)
    async with GrpcServer(settings, [], credentials=server_credentials(settings)) as running:
        yield running


async def check(channel: aio.Channel) -> str:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_only_clients_with_a_certificate_from_the_ca_get_in(server: GrpcServer, certs: Certs) -> None:
    trusted = channel_credentials(tls(certs, certs.client))
    assert trusted is not None
    async with aio.secure_channel(server.address, trusted) as channel:
        assert await check(channel) == "SERVING"

    no_cert = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    rogue = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes(),
                                         private_key=certs.rogue_client.key.read_bytes(),
                                         certificate_chain=certs.rogue_client.cert.read_bytes())
    for channel in (aio.secure_channel(server.address, no_cert), aio.secure_channel(server.address, rogue),
                    aio.insecure_channel(server.address)):
        async with channel:
            with pytest.raises(aio.AioRpcError) as refused:
                await check(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_plaintext_health_port_answers_health_and_nothing_else(server: GrpcServer) -> None:
    assert server.health_port and server.health_port != server.port
    async with aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        assert await check(channel) == "SERVING"
        other = channel.unary_unary("/philip.v1.Gateway/GetSession")
        with pytest.raises(aio.AioRpcError) as caught:
            await other(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tls_settings_come_in_threes(certs: Certs) -> None:
    with pytest.raises(ValueError, match="missing PHILIP_TLS_CA"):
        Settings(tls_cert=str(certs.server.cert), tls_key=str(certs.server.key))
    with pytest.raises(ValueError, match=re.escape("PHILIP_TLS_CERT='/nowhere.pem': cannot read it")):
        server_credentials(Settings(tls_cert="/nowhere.pem", tls_key="/nowhere.key", tls_ca=str(certs.ca)))


@pytest.mark.slow
async def test_gateway_generates_through_mtls_upstreams(certs: Certs, tmp_path: Path) -> None:
    stop = asyncio.Event()
    tasks, addresses = [], {}
    common = {"model_dir": str(MODEL), "upscaler_path": str(UPSCALER), "threads": 1, "grace_s": 0.5,
              "adapters_dir": str(tmp_path / "adapters")}
    try:
        for role in ("generator", "refiner"):
            ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
            tasks.append(asyncio.create_task(serve(role, tls(certs, certs.server, **common), stop=stop,
                                                   on_ready=ready.set_result)))
            addresses.update(await asyncio.wait_for(asyncio.shield(ready), 120))
        ready = asyncio.get_running_loop().create_future()
        gateway = tls(certs, certs.client, generator_addr=addresses["generator"],
                      refiner_addr=addresses["refiner"], **common)
        tasks.append(asyncio.create_task(serve("gateway", gateway, stop=stop, on_ready=ready.set_result)))
        address = (await asyncio.wait_for(asyncio.shield(ready), 60))["gateway"]
        async with gateway_channel(address) as channel:
            outcome = await stream_generation(gateway_pb2_grpc.GatewayStub(channel), common_pb2.GenerationParams(
                prompt="a red circle", num_images=1, steps=2, seed=1), timeout_s=60)
        assert len(outcome.images) == 1
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
