"""Internal services serve only the gateway (issue 22, item 5): `serve("all")` with API keys, and so
with an internal token the process made for itself.

A direct call to the generator, refiner or personalizer (unary or streaming), without tenant
metadata, with a forged ``x-philip-tenant`` or with a made-up ``x-philip-internal`` token, is
UNAUTHENTICATED; the same services through the gateway work; health and reflection answer
without credentials (kubelet probes, grpcurl).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from philip.clients.generate import stream_generation
from philip.clients.session import SessionClient
from philip.v1 import (
    common_pb2,
    gateway_pb2,
    generator_pb2,
    generator_pb2_grpc,
    personalizer_pb2,
    personalizer_pb2_grpc,
    refiner_pb2,
    refiner_pb2_grpc,
)
from tests.gateway.deployment import Deployment, deployed

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
PARAMS = common_pb2.GenerationParams(prompt="a red circle", num_images=2, steps=2, seed=3)
Metadata = tuple[tuple[str, str], ...]
# What a caller that reached an internal port could send: nothing, a tenant of its choosing, a guessed token.
ATTEMPTS: tuple[Metadata, ...] = ((), (("x-philip-tenant", "acme"),),
                                  (("x-philip-tenant", "acme"), ("x-philip-internal", "x" * 43)))
Call = Callable[[aio.Channel, Metadata], Awaitable[object]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    async with deployed(tmp_path_factory.mktemp("internal"), ("acme",)) as running:
        yield running


async def _drain(stream: AsyncIterator[object]) -> None:
    async for _ in stream:
        pass


def _generator_calls() -> list[Call]:
    start = generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=PARAMS))
    return [
        lambda ch, md: generator_pb2_grpc.GeneratorServiceStub(ch).GetJob(
            generator_pb2.GetJobRequest(job_id="job_x"), metadata=md, timeout=10),
        lambda ch, md: _drain(generator_pb2_grpc.GeneratorServiceStub(ch).Generate(
            iter([start]), metadata=md, timeout=10)),
    ]


def _refiner_calls() -> list[Call]:
    return [
        lambda ch, md: refiner_pb2_grpc.RefinerServiceStub(ch).GetDefaults(
            refiner_pb2.GetDefaultsRequest(), metadata=md, timeout=10),
        lambda ch, md: _drain(refiner_pb2_grpc.RefinerServiceStub(ch).Refine(
            refiner_pb2.RefineRequest(params=PARAMS), metadata=md, timeout=10)),
    ]


def _personalizer_calls() -> list[Call]:
    return [
        lambda ch, md: personalizer_pb2_grpc.PersonalizerServiceStub(ch).ListAdapters(
            personalizer_pb2.ListAdaptersRequest(), metadata=md, timeout=10),
        lambda ch, md: _drain(personalizer_pb2_grpc.PersonalizerServiceStub(ch).WatchJob(
            personalizer_pb2.WatchJobRequest(job_id="job_x"), metadata=md, timeout=10)),
    ]


@pytest.mark.parametrize("service, calls", [("generator", _generator_calls()), ("refiner", _refiner_calls()),
                                            ("personalizer", _personalizer_calls())])
async def test_a_direct_call_to_an_internal_service_is_refused(deployment: Deployment, service: str,
                                                               calls: list[Call]) -> None:
    async with aio.insecure_channel(deployment.addresses[service]) as channel:
        for call in calls:
            for metadata in ATTEMPTS:
                with pytest.raises(aio.AioRpcError) as refused:
                    await call(channel, metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (service, metadata)
                assert "call the gateway instead" in (refused.value.details() or "")


@pytest.mark.parametrize("service", ["generator", "refiner", "personalizer"])
async def test_health_and_reflection_need_no_credentials(deployment: Deployment, service: str) -> None:
    async with aio.insecure_channel(deployment.addresses[service]) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = [s.name async for r in listing for s in r.list_services_response.service]
        assert any(name.startswith("philip.v1.") for name in names), names


async def test_through_the_gateway_every_internal_service_works(deployment: Deployment) -> None:
    channel, acme = deployment.stub("acme")
    async with channel:
        job = await stream_generation(acme, PARAMS, timeout_s=60)  # generator
        assert len(job.images) == 2
        assert (await acme.GetJob(generator_pb2.GetJobRequest(job_id=job.job_id))).images
        session = await SessionClient.start(acme, PARAMS, timeout_s=60)
        async with session:
            first = await session.next_round()  # generator
            steered = await session.feedback([first.images[0].image.id], [first.images[1].image.id])  # refiner
        assert steered.images
        assert (await acme.ListAdapters(personalizer_pb2.ListAdaptersRequest())).adapters == []  # personalizer
        with pytest.raises(aio.AioRpcError) as caught:  # the gateway asked, the personalizer answered
            await acme.GetTrainingJob(personalizer_pb2.WatchJobRequest(job_id="tj_" + "0" * 16))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        snapshot = await acme.GetSession(gateway_pb2.GetSessionRequest(session_id=session.session_id))
        assert len(snapshot.rounds) == 2
