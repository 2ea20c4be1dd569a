"""API keys and tenant isolation over real gRPC: `serve("all")` with a keys file of two tenants.

No key or a wrong key: UNAUTHENTICATED (health needs none). Each tenant sees only its own sessions,
generation jobs, training jobs and adapters; another tenant's id answers NOT_FOUND, never the data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from philip.clients.generate import gateway_channel, stream_generation
from philip.clients.session import SessionClient
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, generator_pb2, personalizer_pb2
from tests.gateway.deployment import Deployment, deployed
from tests.personalizer.conftest import reference_pngs

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
PARAMS = common_pb2.GenerationParams(prompt="a red circle", num_images=2, steps=2, seed=3)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    async with deployed(tmp_path_factory.mktemp("auth"), ("acme", "globex")) as running:
        yield running


async def test_calls_need_a_valid_key_but_health_does_not(deployment: Deployment) -> None:
    for key in (None, "phk_" + "0" * 48, "not-a-key"):
        async with gateway_channel(deployment.address, key) as channel:
            with pytest.raises(aio.AioRpcError) as caught:
                await gateway_pb2_grpc.GatewayStub(channel).GetSession(
                    gateway_pb2.GetSessionRequest(session_id="ses_x"))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "API key" in (caught.value.details() or "")
            with pytest.raises(aio.AioRpcError) as streamed:
                await stream_generation(gateway_pb2_grpc.GatewayStub(channel), PARAMS, timeout_s=30)
            assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_key_added_to_the_file_works_without_a_restart(deployment: Deployment) -> None:
    import asyncio

    from philip.rpc.auth import add_key

    assert deployment.keys_file is not None
    before = deployment.keys_file.read_text()

    async def status(key: str) -> grpc.StatusCode:
        async with gateway_channel(deployment.address, key) as channel:
            with pytest.raises(aio.AioRpcError) as caught:
                await gateway_pb2_grpc.GatewayStub(channel).GetSession(
                    gateway_pb2.GetSessionRequest(session_id="ses_x"))
        return caught.value.code()

    try:
        new_key = add_key(deployment.keys_file, "initech")
        await asyncio.sleep(1.2)  # the gateway looks at the file at most once a second
        assert await status(new_key) == grpc.StatusCode.NOT_FOUND  # authenticated: the session is just unknown
        deployment.keys_file.write_text("{ not json")  # a broken file keeps the keys that were loaded
        await asyncio.sleep(1.2)
        assert await status(new_key) == grpc.StatusCode.NOT_FOUND
        assert await status(deployment.keys["acme"]) == grpc.StatusCode.NOT_FOUND
    finally:
        deployment.keys_file.write_text(before)
        await asyncio.sleep(1.2)
    assert await status(new_key) == grpc.StatusCode.UNAUTHENTICATED  # removed again: refused


async def test_tenants_see_only_their_own(deployment: Deployment) -> None:
    async with deployment.channel("acme") as a_channel, deployment.channel("globex") as b_channel:
        acme, globex = gateway_pb2_grpc.GatewayStub(a_channel), gateway_pb2_grpc.GatewayStub(b_channel)

        session = await SessionClient.start(acme, PARAMS, timeout_s=60)
        async with session:
            await session.next_round()
        assert (await acme.GetSession(gateway_pb2.GetSessionRequest(session_id=session.session_id))).rounds
        job = await stream_generation(acme, PARAMS, timeout_s=60)
        assert (await acme.GetJob(generator_pb2.GetJobRequest(job_id=job.job_id))).images

        training = await acme.CreateAdapter(personalizer_pb2.CreateAdapterRequest(
            reference_images=reference_pngs(4), token="acmex", class_word="shape", steps=3))
        events = [e async for e in acme.WatchJob(personalizer_pb2.WatchJobRequest(job_id=training.job_id))]
        adapter_id = events[-1].job.adapter_id
        assert adapter_id and [a.adapter_id for a in (await acme.ListAdapters(
            personalizer_pb2.ListAdaptersRequest())).adapters] == [adapter_id]
        used = await stream_generation(acme, common_pb2.GenerationParams(
            prompt="a acmex", num_images=1, steps=2, seed=1, adapter_ids=[adapter_id]), timeout_s=60)
        assert used.images

        foreign = [
            globex.GetSession(gateway_pb2.GetSessionRequest(session_id=session.session_id)),
            globex.GetJob(generator_pb2.GetJobRequest(job_id=job.job_id)),
            globex.GetTrainingJob(personalizer_pb2.WatchJobRequest(job_id=training.job_id)),
            globex.CancelJob(personalizer_pb2.CancelJobRequest(job_id=training.job_id)),
            globex.GetAdapter(personalizer_pb2.GetAdapterRequest(adapter_id=adapter_id)),
            globex.DeleteAdapter(personalizer_pb2.DeleteAdapterRequest(adapter_id=adapter_id)),
        ]
        for call in foreign:
            with pytest.raises(aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        for stream in (globex.Subscribe(gateway_pb2.SubscribeRequest(session_id=session.session_id)),
                       globex.Subscribe(gateway_pb2.SubscribeRequest(job_id=job.job_id)),
                       globex.WatchJob(personalizer_pb2.WatchJobRequest(job_id=training.job_id))):
            with pytest.raises(aio.AioRpcError) as caught:
                async for _ in stream:
                    pass
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(aio.AioRpcError) as caught:  # another tenant's adapter cannot be used
            await stream_generation(globex, common_pb2.GenerationParams(
                prompt="a acmex", num_images=1, steps=2, seed=1, adapter_ids=[adapter_id]), timeout_s=60)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        resumed = globex.Session()
        await resumed.write(gateway_pb2.SessionClientMessage(
            resume=gateway_pb2.SessionResume(session_id=session.session_id)))
        with pytest.raises(aio.AioRpcError) as caught:
            await resumed.read()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await globex.ListAdapters(personalizer_pb2.ListAdaptersRequest())).adapters == []
        # acme's things are untouched by globex's attempts
        assert (await acme.GetAdapter(personalizer_pb2.GetAdapterRequest(adapter_id=adapter_id))).token == "acmex"
