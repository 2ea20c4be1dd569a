"""Personalization over real gRPC through the gateway: `serve("all")` on Redis and philip-tiny.

Job lifecycle (create, watch, list, get, delete), an adapter used in generation and in a session,
cancel, and every bad input with its status code.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from PIL import Image

from philip.settings import Settings
from philip.store import RedisStore
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, generator_pb2, personalizer_pb2
from services.app import serve
from tests.personalizer.conftest import MODEL, REDIS_URL, UPSCALER, drop_keys, reference_pngs

pytestmark = pytest.mark.asyncio(loop_scope="module")
PB = personalizer_pb2


class Deployment:
    def __init__(self, addresses: dict[str, str], adapters_dir: Path) -> None:
        self.channel = aio.insecure_channel(addresses["gateway"], options=[("grpc.max_receive_message_length", -1),
                                                                           ("grpc.max_send_message_length", -1)])
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.adapters_dir = adapters_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0)
    if not await store.ping():
        await store.close()
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    adapters = tmp_path_factory.mktemp("adapters")
    settings = Settings(model_dir=str(MODEL), upscaler_path=str(UPSCALER), adapters_dir=str(adapters), port=0,
                        http_port=0, max_batch=8, batch_window_ms=5, blob_ttl_s=300, grace_s=1.0, threads=1,
                        train_checkpoint_every=5)
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("all", settings, store=store, stop=stop, on_ready=ready.set_result))
    deployment = Deployment(await asyncio.wait_for(asyncio.shield(ready), 120), adapters)
    try:
        yield deployment
    finally:
        await deployment.channel.close()
        stop.set()
        await asyncio.wait_for(task, 60)
        await store.close()
        await drop_keys(prefix)


def create(token: str, steps: int = 10, images: list[bytes] | None = None, **fields: Any) -> PB.CreateAdapterRequest:
    return PB.CreateAdapterRequest(reference_images=reference_pngs(5) if images is None else images, token=token,
                                   class_word="shape", steps=steps, **fields)


async def watch(d: Deployment, job_id: str) -> list[PB.TrainingEvent]:
    call = d.stub.WatchJob(PB.WatchJobRequest(job_id=job_id), timeout=240)
    return [event async for event in call]


async def generate(d: Deployment, adapter_ids: list[str], seed: int = 5) -> list[bytes]:
    params = common_pb2.GenerationParams(prompt="a sks on a blue background", num_images=2, steps=6, seed=seed,
                                         adapter_ids=adapter_ids)
    call = d.stub.Generate(timeout=60)
    await call.write(generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=params)))
    await call.done_writing()
    async for event in call:
        if event.WhichOneof("event") == "result":
            return [image.png for image in event.result.images]
    raise AssertionError("no result")


async def test_lifecycle_and_the_adapter_in_generation_and_sessions(deployment: Deployment) -> None:
    d = deployment
    job = await d.stub.CreateAdapter(create("sks"))
    assert job.state == common_pb2.JOB_STATE_QUEUED and job.total_steps == 10
    events = await watch(d, job.job_id)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "job" and kinds[-1] == "job" and "adapter" in kinds and "preview" in kinds
    states = [e.job.state for e in events if e.WhichOneof("event") == "job"]
    assert states == [common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING, common_pb2.JOB_STATE_SUCCEEDED]
    assert [e.progress.step for e in events if e.WhichOneof("event") == "progress"] == list(range(1, 11))
    preview = next(e.preview for e in events if e.WhichOneof("event") == "preview")
    assert Image.open(io.BytesIO(preview.image.png)).size == (64, 64)
    adapter = next(e.adapter for e in events if e.WhichOneof("event") == "adapter")
    assert (adapter.token, adapter.method, adapter.job_id) == ("sks", PB.ADAPTER_METHOD_LORA, job.job_id)

    done = await d.stub.GetTrainingJob(PB.WatchJobRequest(job_id=job.job_id))
    assert (done.state, done.adapter_id, done.step) == (common_pb2.JOB_STATE_SUCCEEDED, adapter.adapter_id, 10)
    listed = await d.stub.ListAdapters(PB.ListAdaptersRequest())
    assert adapter.adapter_id in [a.adapter_id for a in listed.adapters]
    assert (await d.stub.GetAdapter(PB.GetAdapterRequest(adapter_id=adapter.adapter_id))).token == "sks"

    # The adapter changes what the generator draws; without it the same seeds give the base images.
    base = await generate(d, [])
    adapted = await generate(d, [adapter.adapter_id])
    assert adapted != base
    assert await generate(d, []) == base  # deactivated exactly: no leftover LoRA or token

    session = d.stub.Session(timeout=120)
    params = common_pb2.GenerationParams(prompt="a sks on a red background", num_images=2, steps=6, seed=3,
                                         adapter_ids=[adapter.adapter_id])
    await session.write(gateway_pb2.SessionClientMessage(start=gateway_pb2.SessionStart(params=params)))
    async for event in session:
        if event.WhichOneof("event") == "round_images":
            assert len(event.round_images.images) == 2
            liked = event.round_images.images[0].image.id
            await session.write(gateway_pb2.SessionClientMessage(
                feedback=gateway_pb2.SessionFeedback(liked_image_ids=[liked])))
            if event.round == 2:  # the refiner's feedback round ran with the adapter too
                break
        assert event.WhichOneof("event") != "error", event.error
    session.cancel()

    await d.stub.DeleteAdapter(PB.DeleteAdapterRequest(adapter_id=adapter.adapter_id))
    with pytest.raises(aio.AioRpcError) as caught:
        await d.stub.GetAdapter(PB.GetAdapterRequest(adapter_id=adapter.adapter_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as caught:
        await generate(d, [adapter.adapter_id])  # deleted: even a generator that cached it refuses
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert adapter.adapter_id in (caught.value.details() or "")


async def test_cancel_a_running_job(deployment: Deployment) -> None:
    d = deployment
    job = await d.stub.CreateAdapter(create("zqc", steps=500))
    call = d.stub.WatchJob(PB.WatchJobRequest(job_id=job.job_id), timeout=120)
    seen = []
    async for event in call:
        seen.append(event)
        if event.WhichOneof("event") == "progress" and event.progress.step == 2:
            cancelled = await d.stub.CancelJob(PB.CancelJobRequest(job_id=job.job_id))
            assert cancelled.state == common_pb2.JOB_STATE_RUNNING  # flagged; the worker stops it
    last = seen[-1].job
    assert last.state == common_pb2.JOB_STATE_CANCELLED and last.step < 50 and "cancelled" in last.error
    with pytest.raises(aio.AioRpcError) as caught:
        await d.stub.CancelJob(PB.CancelJobRequest(job_id=job.job_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 30, 200)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(("request_", "code", "text"), [
    (create("sks", images=reference_pngs(3)), grpc.StatusCode.INVALID_ARGUMENT, "4-7 images"),
    (create("sks", images=reference_pngs(8)), grpc.StatusCode.INVALID_ARGUMENT, "got 8"),
    (create("sks", images=[*reference_pngs(4), b"not an image at all"]), grpc.StatusCode.INVALID_ARGUMENT,
     "reference_images[4] is not a PNG or JPEG image"),
    (create("sks", images=[_png(8000, 5000), *reference_pngs(4)]), grpc.StatusCode.INVALID_ARGUMENT,
     "40.0 megapixels"),
    (create("red"), grpc.StatusCode.ALREADY_EXISTS, "'red' is already a word the model knows"),
    (create("Bad Token"), grpc.StatusCode.INVALID_ARGUMENT, "token must be 2-32 lowercase letters"),
])
async def test_bad_create_requests(deployment: Deployment, request_: PB.CreateAdapterRequest,
                                   code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await deployment.stub.CreateAdapter(request_)
    assert caught.value.code() == code
    assert text in (caught.value.details() or "")


async def test_unknown_adapter_and_job_ids(deployment: Deployment) -> None:
    d = deployment
    unknown = "ad_00000000deadbeef"
    for call in (d.stub.GetAdapter(PB.GetAdapterRequest(adapter_id=unknown)),
                 d.stub.DeleteAdapter(PB.DeleteAdapterRequest(adapter_id=unknown)),
                 d.stub.GetTrainingJob(PB.WatchJobRequest(job_id="tj_00000000deadbeef"))):
        with pytest.raises(aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as caught:
        await generate(d, [unknown])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"unknown adapter id {unknown}" in (caught.value.details() or "")
    with pytest.raises(aio.AioRpcError) as caught:
        await generate(d, ["sks"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
