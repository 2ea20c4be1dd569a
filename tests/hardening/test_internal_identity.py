"""How an internal service tells the gateway's calls from anyone else's (philip/rpc/internal.py).

The internal token (PHILIP_INTERNAL_TOKEN_FILE) and, with mTLS, the gateway certificate's SAN
(PHILIP_GATEWAY_IDENTITY), over real gRPC on loopback: on a stand-in ``philip.v1`` method that
answers with the tenant it was served as, and end to end on a split deployment with a certificate
per service. Plus the settings' validation and the start-up errors that keep a misconfigured
pod from serving open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from philip.clients.generate import gateway_channel, stream_generation
from philip.rpc.auth import add_key, current_tenant
from philip.rpc.internal import INTERNAL_KEY, internal_auth, server_interceptor, upstream_interceptors
from philip.rpc.server import GrpcServer
from philip.rpc.tls import server_credentials
from philip.settings import Settings
from philip.v1 import common_pb2, gateway_pb2_grpc, generator_pb2, generator_pb2_grpc
from services.app import serve
from tests.hardening.certs import GATEWAY_SAN, Pair, ServiceCerts, make_service_certs
from tests.personalizer.conftest import MODEL, UPSCALER

TOKEN, NEXT_TOKEN = "a" * 40, "b" * 40
METHOD = "/philip.v1.GeneratorService/GetJob"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServiceCerts:
    return make_service_certs(tmp_path_factory.mktemp("service-certs"))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "internal-token"
    path.write_text(f"{TOKEN}\n{NEXT_TOKEN}\n")  # mid-rotation: both accepted, the gateway sends the first
    return path


def mtls(certs: ServiceCerts, pair: Pair, **more: Any) -> dict[str, Any]:
    return {"tls_cert": str(pair.cert), "tls_key": str(pair.key), "tls_ca": str(certs.ca), **more}


@contextlib.asynccontextmanager
async def stand_in(settings: Settings) -> AsyncIterator[str]:
    """A server with the generator role's interceptor and one philip.v1 method that returns its tenant."""
    async def whoami(request: bytes, context: aio.ServicerContext) -> bytes:
        return current_tenant().encode()

    def register(server: aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "philip.v1.GeneratorService", {"GetJob": grpc.unary_unary_rpc_method_handler(whoami)}),))

    own = settings.with_(host="127.0.0.1", port=0)
    async with GrpcServer(own, [("philip.v1.GeneratorService", register)],
                          interceptors=[server_interceptor(internal_auth("generator", own))],
                          credentials=server_credentials(own)) as server:
        yield server.address


async def ask(channel: aio.Channel, *metadata: tuple[str, str]) -> str:
    """The tenant the stand-in served the call as, or the refusal's status name."""
    try:
        return (await channel.unary_unary(METHOD)(b"", metadata=metadata, timeout=10)).decode()
    except aio.AioRpcError as exc:
        assert exc.code() != grpc.StatusCode.UNAUTHENTICATED or "call the gateway instead" in (exc.details() or "")
        return exc.code().name


def client(certs: ServiceCerts, pair: Pair, address: str, **more: Any) -> aio.Channel:
    credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())
    return aio.secure_channel(address, credentials, **more)


async def test_only_calls_with_the_internal_token_and_a_tenant_are_served(token_file: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    add_key(keys, "acme")
    async with stand_in(Settings(internal_token_file=str(token_file), api_keys_file=str(keys))) as address:
        async with aio.insecure_channel(address) as channel:
            assert await ask(channel, (INTERNAL_KEY, TOKEN), ("x-philip-tenant", "acme")) == "acme"
            assert await ask(channel, (INTERNAL_KEY, NEXT_TOKEN), ("x-philip-tenant", "acme")) == "acme"
            for metadata in [(), (("x-philip-tenant", "acme"),),  # no token, with or without a forged tenant
                             ((INTERNAL_KEY, "c" * 40), ("x-philip-tenant", "acme")),
                             ((INTERNAL_KEY, TOKEN[:-1]), ("x-philip-tenant", "acme")),
                             ((INTERNAL_KEY, TOKEN),),  # the gateway's token but no tenant
                             ((INTERNAL_KEY, TOKEN), ("x-philip-tenant", "")),  # API keys on: "" is no tenant
                             ((INTERNAL_KEY, TOKEN), ("x-philip-tenant", "../acme"))]:
                assert await ask(channel, *metadata) == "UNAUTHENTICATED", metadata
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        # The gateway's side: its channels attach the token; the tenant comes with each call's metadata.
        gateway = internal_auth("gateway", Settings(internal_token_file=str(token_file), api_keys_file=str(keys)))
        async with aio.insecure_channel(address, interceptors=upstream_interceptors(gateway)) as channel:
            assert await ask(channel, ("x-philip-tenant", "acme")) == "acme"
            assert await ask(channel) == "UNAUTHENTICATED"


async def test_an_open_gateway_with_a_token_forwards_the_empty_tenant(token_file: Path) -> None:
    async with stand_in(Settings(internal_token_file=str(token_file))) as address, \
            aio.insecure_channel(address) as channel:
        assert await ask(channel, (INTERNAL_KEY, TOKEN), ("x-philip-tenant", "")) == ""
        assert await ask(channel, ("x-philip-tenant", "")) == "UNAUTHENTICATED"


async def test_with_mtls_only_the_gateways_certificate_may_call(certs: ServiceCerts, token_file: Path) -> None:
    tenant = ("x-philip-tenant", "acme")
    async with stand_in(Settings(**mtls(certs, certs.generator, gateway_identity=GATEWAY_SAN))) as address:
        async with client(certs, certs.gateway, address) as channel:
            assert await ask(channel, tenant) == "acme"
        async with client(certs, certs.refiner, address) as channel:  # the CA signed it, but it is not the gateway
            assert await ask(channel, tenant) == "UNAUTHENTICATED"
    both = Settings(**mtls(certs, certs.generator, gateway_identity=GATEWAY_SAN, internal_token_file=str(token_file)))
    async with stand_in(both) as address:
        async with client(certs, certs.gateway, address) as channel:
            assert await ask(channel, (INTERNAL_KEY, TOKEN), tenant) == "acme"
            assert await ask(channel, tenant) == "UNAUTHENTICATED"  # each configured check must pass
        async with client(certs, certs.refiner, address) as channel:
            assert await ask(channel, (INTERNAL_KEY, TOKEN), tenant) == "UNAUTHENTICATED"


def test_new_settings_are_validated_where_defined() -> None:
    with pytest.raises(ValueError, match="PHILIP_GATEWAY_IDENTITY='philip gateway': must be a SAN"):
        Settings.from_env({"PHILIP_GATEWAY_IDENTITY": "philip gateway"})
    with pytest.raises(ValueError, match="PHILIP_INTERNAL_TOKEN_FILE"):
        Settings(internal_token_file="  ")
    settings = Settings.from_env({"PHILIP_INTERNAL_TOKEN_FILE": "/etc/philip/internal/internal-token",
                                  "PHILIP_GATEWAY_IDENTITY": "spiffe://cluster.local/ns/philip/sa/philip-gateway"})
    assert settings.auth.gateway_identity and settings.auth.internal_token_file


async def test_auth_on_without_the_gateways_identity_fails_at_start_up(tmp_path: Path, certs: ServiceCerts) -> None:
    keys = tmp_path / "keys.json"
    add_key(keys, "acme")
    for role in ("generator", "refiner", "personalizer"):
        with pytest.raises(ValueError, match=rf"the {role} cannot tell.*set PHILIP_INTERNAL_TOKEN_FILE"):
            internal_auth(role, Settings(api_keys_file=str(keys)))
    with pytest.raises(ValueError, match=r"the gateway has no credentials.*PHILIP_INTERNAL_TOKEN_FILE"):
        internal_auth("gateway", Settings(api_keys_file=str(keys)))
    with pytest.raises(ValueError, match="PHILIP_GATEWAY_IDENTITY needs mTLS"):
        internal_auth("refiner", Settings(gateway_identity=GATEWAY_SAN))
    short = tmp_path / "short-token"
    short.write_text("s3cr3t\n")
    with pytest.raises(ValueError, match="at least 32 printable ASCII") as caught:
        internal_auth("generator", Settings(internal_token_file=str(short)))
    assert "s3cr3t" not in str(caught.value)  # the token never reaches an error (or a log line)
    with pytest.raises(ValueError, match="cannot read it"):
        internal_auth("generator", Settings(internal_token_file=str(tmp_path / "missing")))
    # Before anything loads: a model folder that does not exist is never reached.
    with pytest.raises(ValueError, match="PHILIP_INTERNAL_TOKEN_FILE"):
        await serve("generator", Settings(api_keys_file=str(keys), model_dir=str(tmp_path / "nowhere"), port=0))


def test_serve_all_makes_a_token_of_its_own(tmp_path: Path, token_file: Path) -> None:
    keys = tmp_path / "keys.json"
    add_key(keys, "acme")
    assert internal_auth("all", Settings()) is None  # auth off: open, as the gateway is
    first, second = (internal_auth("all", Settings(api_keys_file=str(keys))) for _ in range(2))
    assert first and second and len(first.tokens[0]) >= 32 and first.tokens != second.tokens
    assert first.tokens[0] not in repr(first)
    configured = internal_auth("all", Settings(api_keys_file=str(keys), internal_token_file=str(token_file)))
    assert configured and configured.tokens == (TOKEN, NEXT_TOKEN)


@pytest.mark.slow
async def test_split_deployment_with_a_certificate_per_service(certs: ServiceCerts, token_file: Path,
                                                               tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    key = add_key(keys, "acme")
    common = {"model_dir": str(MODEL), "upscaler_path": str(UPSCALER), "threads": 1, "grace_s": 0.5,
              "adapters_dir": str(tmp_path / "adapters"), "host": "127.0.0.1", "port": 0, "http_port": 0,
              "api_keys_file": str(keys), "internal_token_file": str(token_file)}
    stop, tasks, addresses = asyncio.Event(), [], {}

    async def start(role: str, settings: Settings) -> None:
        ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        tasks.append(asyncio.create_task(serve(role, settings, stop=stop, on_ready=ready.set_result)))
        addresses.update(await asyncio.wait_for(asyncio.shield(ready), 120))

    try:
        for role, pair in (("generator", certs.generator), ("refiner", certs.refiner)):
            await start(role, Settings(**mtls(certs, pair, gateway_identity=GATEWAY_SAN, **common)))
        await start("gateway", Settings(**mtls(certs, certs.gateway, generator_addr=addresses["generator"],
                                                refiner_addr=addresses["refiner"], **common)))
        async with gateway_channel(addresses["gateway"], key) as channel:
            outcome = await stream_generation(gateway_pb2_grpc.GatewayStub(channel), common_pb2.GenerationParams(
                prompt="a red circle", num_images=1, steps=2, seed=1), timeout_s=60)
        assert len(outcome.images) == 1
        # The refiner's own certificate, the token and a tenant: everything but the gateway's identity.
        async with client(certs, certs.refiner, addresses["generator"]) as channel:
            with pytest.raises(aio.AioRpcError) as refused:
                await generator_pb2_grpc.GeneratorServiceStub(channel).GetJob(
                    generator_pb2.GetJobRequest(job_id=outcome.job_id), timeout=10,
                    metadata=((INTERNAL_KEY, TOKEN), ("x-philip-tenant", "acme")))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
