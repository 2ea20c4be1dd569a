"""End to end over real gRPC: client -> gateway -> generator (tiny random model) with Redis.

One ``serve("all")`` process-in-a-task for the module, exactly as ``philip serve all`` runs.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from redis.asyncio import Redis

from philip.generation.jobs import JOB_KIND
from philip.rpc.status import error_details
from philip.settings import Settings
from philip.store import RedisStore
from philip.v1 import common_pb2, gateway_pb2_grpc, generator_pb2
from services.app import serve
from tests.generator.conftest import STYLES_PATH

pytestmark = pytest.mark.asyncio(loop_scope="module")

REDIS_URL = "redis://127.0.0.1:6379/15"
MAX_QUEUE = 2
Event = generator_pb2.GenerateEvent


class Deployment:
    def __init__(self, gateway: str, generator: str, store: RedisStore) -> None:
        self.gateway = gateway
        self.generator = generator
        self.store = store
        self.channel = aio.insecure_channel(gateway)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tiny_model_dir: Path) -> AsyncIterator[Deployment]:
    probe = RedisStore(REDIS_URL, socket_timeout=1.0, retries=0)
    reachable = await probe.ping()
    await probe.close()
    if not reachable:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0)
    settings = Settings(model_dir=str(tiny_model_dir), port=0, http_port=0, styles_path=str(STYLES_PATH),
                        max_queue=MAX_QUEUE, max_batch=8, batch_window_ms=15, blob_ttl_s=120, grace_s=1.0, threads=1)
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("all", settings, store=store, stop=stop, on_ready=ready.set_result))
    addresses = await asyncio.wait_for(asyncio.shield(ready), 60)
    deployment = Deployment(addresses["gateway"], addresses["generator"], store)
    try:
        yield deployment
    finally:
        await deployment.channel.close()
        stop.set()
        await asyncio.wait_for(task, 30)
        await store.close()
        raw = Redis.from_url(REDIS_URL)
        keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


def params(prompt: str = "a red circle on a blue background", **fields: Any) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(prompt=prompt, **{"num_images": 1, "steps": 4, "seed": 7, **fields})


def start(p: common_pb2.GenerationParams) -> generator_pb2.GenerateClientMessage:
    return generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=p))


CANCEL = generator_pb2.GenerateClientMessage(cancel=generator_pb2.CancelGeneration())


class Stream:
    """A Generate call whose events are collected in the background (with arrival times)."""

    def __init__(self, stub: gateway_pb2_grpc.GatewayStub, p: common_pb2.GenerationParams,
                 timeout: float | None = 30) -> None:
        self.call = stub.Generate(timeout=timeout)
        self.events: list[tuple[float, Event]] = []
        self.ended = False
        self.changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read(p))

    async def _read(self, p: common_pb2.GenerationParams) -> None:
        try:
            await self.call.write(start(p))
            async for event in self.call:
                async with self.changed:
                    self.events.append((time.monotonic(), event))
                    self.changed.notify_all()
        finally:
            async with self.changed:
                self.ended = True
                self.changed.notify_all()

    def kinds(self) -> list[str]:
        return [e.WhichOneof("event") for _, e in self.events]

    def first(self, kind: str) -> tuple[float, Event] | None:
        return next(((at, e) for at, e in self.events if e.WhichOneof("event") == kind), None)

    async def wait_for(self, kind: str, timeout: float = 20) -> tuple[float, Event]:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.ended or self.first(kind) is not None), timeout)
        found = self.first(kind)
        if found is None:
            await self.task  # surfaces the RPC error, if that is why the stream ended
            raise AssertionError(f"stream ended without {kind}: {self.kinds()}")
        return found

    async def finish(self, timeout: float = 30) -> list[Event]:
        await asyncio.wait_for(self.task, timeout)
        return [event for _, event in self.events]


async def run(stub: gateway_pb2_grpc.GatewayStub, p: common_pb2.GenerationParams) -> list[Event]:
    return await Stream(stub, p).finish()


def pixels(image: common_pb2.Image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB")).astype(int)


def max_diff(a: common_pb2.Image, b: common_pb2.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


async def blocker(stub: gateway_pb2_grpc.GatewayStub) -> Stream:
    """A long job that occupies the worker until cancelled (so others queue up behind it)."""
    stream = Stream(stub, params("a black star", num_images=8, steps=100, scheduler="euler"))
    await stream.wait_for("progress")
    return stream


async def cancelled_record(deployment: Deployment, job_id: str) -> dict[str, Any]:
    """The job's store record once it is cancelled (the generator notices within a step)."""
    for _ in range(100):
        record = await deployment.store.get_record(JOB_KIND, job_id)
        if record and record["state"] == "cancelled":
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} not cancelled: {record}")


# ---- tests ---------------------------------------------------------------------------------------


async def test_health_is_serving(deployment: Deployment) -> None:
    for address, service in ((deployment.gateway, "philip.v1.Gateway"),
                             (deployment.generator, "philip.v1.GeneratorService")):
        async with aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_event_order_previews_and_result(deployment: Deployment) -> None:
    events = await run(deployment.stub, params(num_images=2, steps=6, preview_every=2, seed=41))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "queued" and "started" in kinds and kinds[-1] == "result"
    assert kinds.index("started") < kinds.index("progress")
    assert len({e.job_id for e in events}) == 1 and events[0].job_id.startswith("job_")
    assert [e.progress.step for e in events if e.HasField("progress")] == [1, 2, 3, 4, 5, 6]
    previews = [e.preview for e in events if e.HasField("preview")]
    assert [p.step for p in previews] == [2, 4]  # every 2 steps; the last step is the result itself
    assert all(len(p.images) == 2 and p.images[0].width == 16 and not p.images[0].id for p in previews)
    result = events[-1].result
    assert [(i.index, i.seed, i.width, i.height) for i in result.images] == [(0, 41, 64, 64), (1, 42, 64, 64)]
    assert all(i.id.startswith("img_") and pixels(i).shape == (64, 64, 3) for i in result.images)


async def test_vae_previews_are_output_size(deployment: Deployment) -> None:
    events = await run(deployment.stub, params(steps=3, preview_every=1, preview_mode=common_pb2.PREVIEW_MODE_VAE))
    previews = [e.preview for e in events if e.HasField("preview")]
    assert [p.step for p in previews] == [1, 2]
    assert (previews[0].images[0].width, previews[0].images[0].height) == (64, 64)


async def test_preview_rate_changes_mid_stream(deployment: Deployment) -> None:
    stream = Stream(deployment.stub, params(steps=40, preview_every=0))
    _, first = await stream.wait_for("progress")
    await stream.call.write(generator_pb2.GenerateClientMessage(
        preview_rate=generator_pb2.SetPreviewRate(preview_every=5)))
    events = await stream.finish()
    steps = [e.preview.step for e in events if e.HasField("preview")]
    assert steps and all(step % 5 == 0 and step > first.progress.step for step in steps)
    assert events[-1].HasField("result")


async def test_get_job_after_completion_returns_images(deployment: Deployment) -> None:
    events = await run(deployment.stub, params("a green square", num_images=2, style="flat"))
    job = await deployment.stub.GetJob(generator_pb2.GetJobRequest(job_id=events[0].job_id), timeout=5)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    assert (job.step, job.total_steps) == (4, 4) and job.finished_ms >= job.created_ms > 0
    assert [i.png for i in job.images] == [i.png for i in events[-1].result.images]
    assert job.params.prompt.startswith("a green square, flat vector illustration")
    assert job.params.style == "" and job.params.seed == 7 and job.params.guidance == 5.0
    assert job.params.width == 64 and job.params.scheduler == "dpm++"


async def test_get_job_unknown_is_not_found(deployment: Deployment) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await deployment.stub.GetJob(generator_pb2.GetJobRequest(job_id="job_missing"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "job_missing" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"prompt": ""}, "prompt"), ({"num_images": 9}, "num_images"), ({"steps": 101}, "steps"),
     ({"width": 12, "height": 64}, "width"), ({"guidance": 31.0}, "guidance"), ({"scheduler": "heun"}, "scheduler"),
     ({"style": "baroque"}, "style"), ({"adapter_ids": ["sks"]}, "adapter_ids")],
)
async def test_bad_inputs_are_invalid_argument(deployment: Deployment, fields: dict, field: str) -> None:
    stream = Stream(deployment.stub, params(**fields))
    with pytest.raises(aio.AioRpcError) as caught:
        await stream.finish()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")
    assert error_details(caught.value)["field_violations"][0][0] == field  # rich details survive the gateway


async def test_first_message_must_be_start(deployment: Deployment) -> None:
    call = deployment.stub.Generate(timeout=5)
    await call.write(CANCEL)
    with pytest.raises(aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start" in (caught.value.details() or "")


async def test_cancel_frees_the_worker_within_one_step(deployment: Deployment) -> None:
    running = await blocker(deployment.stub)
    waiting = Stream(deployment.stub, params(steps=3))
    await waiting.wait_for("queued")
    await running.wait_for("progress")
    while sum(e.HasField("progress") for _, e in running.events) < 4:
        await asyncio.sleep(0.01)
    times = [at for at, e in running.events if e.HasField("progress")]
    step_s = (times[-1] - times[0]) / (len(times) - 1)
    cancelled_at = time.monotonic()
    await running.call.write(CANCEL)
    started_at, _ = await waiting.wait_for("started")
    events = await running.finish()
    assert events[-1].WhichOneof("event") == "cancelled" and events[-1].cancelled.reason == "client"
    assert not any(e.HasField("result") for e in events)
    print(f"cancel -> next job started: {started_at - cancelled_at:.3f} s; one step: {step_s:.3f} s")
    # At most the step in flight finishes; 0.15 s covers the two gRPC hops and the event loop.
    assert started_at - cancelled_at < step_s + 0.15, (started_at - cancelled_at, step_s)
    assert (await waiting.finish())[-1].HasField("result")
    job = await deployment.stub.GetJob(generator_pb2.GetJobRequest(job_id=events[0].job_id), timeout=5)
    assert job.state == common_pb2.JOB_STATE_CANCELLED and not job.images


async def test_queue_full_is_resource_exhausted(deployment: Deployment) -> None:
    running = await blocker(deployment.stub)
    queued = [Stream(deployment.stub, params(steps=2)) for _ in range(MAX_QUEUE)]
    for stream in queued:
        await stream.wait_for("queued")
    with pytest.raises(aio.AioRpcError) as caught:
        await Stream(deployment.stub, params(steps=2)).finish()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{MAX_QUEUE} jobs queued" in (caught.value.details() or "")
    assert (error_details(caught.value)["retry_after_s"] or 0) > 0
    await queued[0].call.write(CANCEL)  # a queued job is removed at once
    assert (await queued[0].finish())[-1].cancelled.reason == "client"
    await running.call.write(CANCEL)
    await running.finish()
    assert (await queued[1].finish())[-1].HasField("result")


async def test_merged_batch_gives_the_same_pixels_as_solo_runs(deployment: Deployment) -> None:
    a = params("a red circle on a blue background", num_images=2, seed=11, steps=5)
    b = params("a yellow star", negative_prompt="green", num_images=3, seed=99, steps=5)
    running = await blocker(deployment.stub)  # a and b queue up behind it, then leave together
    merged = [Stream(deployment.stub, a), Stream(deployment.stub, b)]
    for stream in merged:
        await stream.wait_for("queued")
    await running.call.write(CANCEL)
    merged_events = [await stream.finish() for stream in merged]
    for events in merged_events:
        assert next(e.started.batch_size for e in events if e.HasField("started")) == 5
    solo_events = [await run(deployment.stub, a), await run(deployment.stub, b)]
    for events in solo_events:
        assert next(e.started.batch_size for e in events if e.HasField("started")) in (2, 3)
    for merged_run, solo_run in zip(merged_events, solo_events, strict=True):
        pairs = zip(merged_run[-1].result.images, solo_run[-1].result.images, strict=True)
        assert all(m.seed == s.seed and max_diff(m, s) <= 2 for m, s in pairs)
    await running.finish()


async def test_seed_reproduces_each_image(deployment: Deployment) -> None:
    first = (await run(deployment.stub, params(num_images=2, seed=1234)))[-1].result.images
    again = (await run(deployment.stub, params(num_images=2, seed=1234)))[-1].result.images
    assert [i.png for i in first] == [i.png for i in again]
    second_alone = (await run(deployment.stub, params(num_images=1, seed=1235)))[-1].result.images[0]
    assert second_alone.seed == first[1].seed == 1235
    assert max_diff(second_alone, first[1]) <= 2  # image i depends only on seed + i, not on its batch
    other = (await run(deployment.stub, params(num_images=1, seed=4321)))[-1].result.images[0]
    assert max_diff(other, first[0]) > 2


async def test_deadline_cancels_the_job(deployment: Deployment) -> None:
    stream = Stream(deployment.stub, params(num_images=8, steps=100), timeout=1.0)
    _, first = await stream.wait_for("queued")
    with pytest.raises(aio.AioRpcError) as caught:
        await stream.finish()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    record = await cancelled_record(deployment, first.job_id)
    assert record["cancel_reason"] == "deadline"


async def test_bad_preview_rate_cancels_and_fails_the_stream(deployment: Deployment) -> None:
    stream = Stream(deployment.stub, params(num_images=8, steps=100))
    await stream.wait_for("progress")
    await stream.call.write(generator_pb2.GenerateClientMessage(
        preview_rate=generator_pb2.SetPreviewRate(preview_every=101)))
    with pytest.raises(aio.AioRpcError) as caught:
        await stream.finish()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "preview_every" in str(caught.value.details())
    assert stream.kinds()[-1] == "cancelled"


async def test_client_disconnect_cancels_the_job(deployment: Deployment) -> None:
    stream = Stream(deployment.stub, params(num_images=8, steps=100))
    _, first = await stream.wait_for("progress")
    stream.call.cancel()
    with pytest.raises(asyncio.CancelledError):  # what grpc raises locally for a cancelled call
        await stream.finish()
    record = await cancelled_record(deployment, first.job_id)
    assert record["cancel_reason"] == "client"


async def test_a_cancel_right_behind_a_rejected_start_keeps_the_real_status(deployment: Deployment) -> None:
    """grpc aio turns a write to an upstream call that just ended into INTERNAL (grpc/grpc#36066);
    the gateway holds later client messages until the generator answers, so the caller sees why."""
    bad = generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=params(width=12, height=64)))
    cancel = generator_pb2.GenerateClientMessage(cancel=generator_pb2.CancelGeneration())
    for _ in range(30):
        call = deployment.stub.Generate()
        await call.write(bad)
        await call.write(cancel)
        await call.done_writing()
        with pytest.raises(aio.AioRpcError) as caught:
            async for _event in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
