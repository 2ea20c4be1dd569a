"""Quotas and the activity log over real gRPC and Redis: `serve("all")` with two tenants, each
allowed 1 open session, 1 generation in flight and 1 training job.

Past a quota: RESOURCE_EXHAUSTED with a RetryInfo delay, and the other tenant is not affected;
the slot comes back when the work ends. ListActivity shows a tenant its own history only, newest
first, in pages.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from philip.clients.generate import stream_generation
from philip.clients.session import SessionClient
from philip.quotas import GENERATIONS, SESSIONS, TRAINING_JOBS
from philip.rpc.status import error_details
from philip.store import RedisStore
from philip.v1 import common_pb2, gateway_pb2, generator_pb2, personalizer_pb2
from tests.gateway.deployment import Deployment, deployed
from tests.personalizer.conftest import REDIS_URL, reference_pngs

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
PARAMS = common_pb2.GenerationParams(prompt="a red circle", num_images=2, steps=2, seed=3)
RUN = uuid.uuid4().hex[:8]  # tenants of this run only: leases of an earlier run cannot interfere
ACME, GLOBEX = f"acme-{RUN}", f"globex-{RUN}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    store = RedisStore(REDIS_URL, prefix=f"philip-test:{RUN}:")
    if not await store.ping():
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    try:
        async with deployed(tmp_path_factory.mktemp("quotas"), (ACME, GLOBEX), store=store, quota_sessions=1,
                            quota_generations=1, quota_training_jobs=1) as running:
            yield running
    finally:
        await store.close()


def assert_exhausted(err: aio.AioRpcError, quota_what: str, retry_after_s: float) -> None:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    details = error_details(err)
    assert quota_what in details["message"] and details["retry_after_s"] == pytest.approx(retry_after_s)


async def test_open_sessions_are_limited_per_tenant(deployment: Deployment) -> None:
    (a_channel, acme), (b_channel, globex) = deployment.stub(ACME), deployment.stub(GLOBEX)
    async with a_channel, b_channel:
        first = await SessionClient.start(acme, PARAMS, timeout_s=60)
        async with first:
            await first.next_round()
            with pytest.raises(aio.AioRpcError) as refused:
                await SessionClient.start(acme, PARAMS, timeout_s=60)
            assert_exhausted(refused.value, "open sessions", SESSIONS.retry_after_s)
            other = await SessionClient.start(globex, PARAMS, timeout_s=60)  # globex has its own quota
            async with other:
                await other.next_round()
                await other.cancel()
            await first.cancel()  # gives acme's slot back
        second = await SessionClient.start(acme, PARAMS, timeout_s=60)
        async with second:
            await second.next_round()
            await second.finalize(second.rounds[-1].images[0].image.id)  # a finished session frees it too
        third = await SessionClient.start(acme, PARAMS, timeout_s=60)
        async with third:
            await third.cancel()


async def test_generations_in_flight_are_limited_per_tenant(deployment: Deployment) -> None:
    (a_channel, acme), (b_channel, globex) = deployment.stub(ACME), deployment.stub(GLOBEX)
    async with a_channel, b_channel:
        long = common_pb2.GenerationParams(prompt="a blue square", num_images=8, steps=8, seed=5)
        running = acme.Generate(iter([generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(
            params=long))]), timeout=120)
        assert (await running.read()).WhichOneof("event")  # accepted: the job is queued or running
        with pytest.raises(aio.AioRpcError) as refused:
            await stream_generation(acme, PARAMS, timeout_s=60)
        assert_exhausted(refused.value, "generations queued or running", GENERATIONS.retry_after_s)
        assert (await stream_generation(globex, PARAMS, timeout_s=60)).images
        async for _ in running:  # the job ends: the slot is free again
            pass
        assert (await stream_generation(acme, PARAMS, timeout_s=60)).images


async def test_training_jobs_are_limited_per_tenant(deployment: Deployment) -> None:
    a_channel, acme = deployment.stub(ACME)
    async with a_channel:
        def request(token: str) -> personalizer_pb2.CreateAdapterRequest:
            return personalizer_pb2.CreateAdapterRequest(reference_images=reference_pngs(4), token=token,
                                                         class_word="shape", steps=400)

        job = await acme.CreateAdapter(request("zqva"))
        with pytest.raises(aio.AioRpcError) as refused:
            await acme.CreateAdapter(request("zqvb"))
        assert_exhausted(refused.value, "training jobs queued or running", TRAINING_JOBS.retry_after_s)
        await acme.CancelJob(personalizer_pb2.CancelJobRequest(job_id=job.job_id))
        events = [e async for e in acme.WatchJob(personalizer_pb2.WatchJobRequest(job_id=job.job_id))]
        assert events[-1].job.state == common_pb2.JOB_STATE_CANCELLED
        retry = await acme.CreateAdapter(request("zqvb"))  # the cancelled job's slot is free again
        await acme.CancelJob(personalizer_pb2.CancelJobRequest(job_id=retry.job_id))


async def test_activity_is_per_tenant_newest_first_and_paged(deployment: Deployment) -> None:
    (a_channel, acme), (b_channel, globex) = deployment.stub(ACME), deployment.stub(GLOBEX)
    async with a_channel, b_channel:
        pages, token = [], ""
        while True:
            page = await acme.ListActivity(gateway_pb2.ListActivityRequest(page_size=3, page_token=token))
            pages.append(page)
            token = page.next_page_token
            if not token:
                break
        entries = [e for p in pages for e in p.entries]
        assert all(len(p.entries) <= 3 for p in pages) and len(pages) >= 3
        assert len({e.id for e in entries}) == len(entries)
        assert [e.at_ms for e in entries] == sorted((e.at_ms for e in entries), reverse=True)
        kinds = [e.kind for e in reversed(entries)]  # oldest first
        for kind in ("session.started", "session.cancelled", "session.finalized", "training.created",
                     "training.cancelled"):
            assert kind in kinds, kinds
        assert kinds.index("session.started") < kinds.index("session.cancelled")
        started = next(e for e in reversed(entries) if e.kind == "session.started")
        assert started.details["prompt"] == "a red circle" and started.subject_id.startswith("ses_")
        theirs = (await globex.ListActivity(gateway_pb2.ListActivityRequest())).entries
        assert {e.kind for e in theirs} == {"session.started", "session.cancelled"}
        assert not {e.subject_id for e in theirs} & {e.subject_id for e in entries}
        for bad in (gateway_pb2.ListActivityRequest(page_size=101),
                    gateway_pb2.ListActivityRequest(page_token="not-a-token")):
            with pytest.raises(aio.AioRpcError) as caught:
                await acme.ListActivity(bad)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
