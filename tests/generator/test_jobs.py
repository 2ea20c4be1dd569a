"""The generator domain with the in-process store: records, blobs and the job event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from philip.generation.jobs import JOB_KIND, job_stream
from philip.generation.requests import RequestResolver
from philip.rpc.errors import InvalidArgument, NotFound
from philip.store import MemoryStore
from philip.v1 import generator_pb2
from services.generator import codec
from services.generator.batching import GenerationQueue
from services.generator.events import Cancelled, JobEvent, Progress, Queued, Result, Started
from services.generator.jobs import Generator, JobState
from tests.generator.fakes import FakeEngine, request


@pytest.fixture
async def generator() -> AsyncIterator[Generator]:
    engine = FakeEngine(step_s=0.01)
    queue = GenerationQueue(engine, max_queue=4, max_batch=8, batch_window_ms=0)
    resolver = RequestResolver(native_size=engine.native_size, schedulers=engine.schedulers)
    gen = Generator(MemoryStore(), queue, resolver, encode_event=codec.encode_event, blob_ttl_s=60)
    yield gen
    await gen.close()


async def collect(handle: AsyncIterator[JobEvent]) -> list[JobEvent]:
    return [event async for event in handle]


async def test_job_is_recorded_and_streamed(generator: Generator) -> None:
    handle = await generator.submit(request(num_images=2, steps=3, preview_every=1))
    events = await collect(handle)
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["Queued", "Started"] and kinds[-1] == "Result"
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3]
    result = events[-1]
    assert isinstance(result, Result) and all(image.id.startswith("img_") for image in result.images)

    job = await generator.get_job(handle.job_id)
    assert job.state is JobState.SUCCEEDED and (job.step, job.total_steps) == (3, 3)
    assert [image.id for image in job.images] == [image.id for image in result.images]
    assert job.images[0].png == b"png" and job.finished_ms >= job.created_ms > 0
    assert job.request == handle.request

    # Every event is in the store stream as GenerateEvent bytes, and the stream is closed.
    stored = [generator_pb2.GenerateEvent.FromString(entry.payload)
              async for entry in generator.store.subscribe(job_stream(handle.job_id))]
    assert [e.WhichOneof("event") for e in stored] == [
        "queued", "started", "progress", "preview", "progress", "preview", "progress", "result"]
    assert {e.job_id for e in stored} == {handle.job_id}


async def test_cancelled_job_state(generator: Generator) -> None:
    handle = await generator.submit(request(steps=50))
    events: list[JobEvent] = []
    async for event in handle:
        events.append(event)
        if isinstance(event, Progress):
            handle.cancel("client")
    assert events[-1] == Cancelled("client")
    job = await generator.get_job(handle.job_id)
    assert job.state is JobState.CANCELLED and job.images == () and job.error == ""
    record = await generator.store.get_record(JOB_KIND, handle.job_id)
    assert record is not None and record["cancel_reason"] == "client"


async def test_preview_rate_can_change_mid_stream(generator: Generator) -> None:
    handle = await generator.submit(request(steps=8, preview_every=0))
    previews = []
    async for event in handle:
        if isinstance(event, Started):
            handle.set_preview_every(2)
        if type(event).__name__ == "Preview":
            previews.append(event.step)  # type: ignore[union-attr]
    assert previews == [2, 4, 6]
    with pytest.raises(InvalidArgument) as caught:
        handle.set_preview_every(101)
    assert caught.value.field == "preview_every"


async def test_unknown_job_is_not_found(generator: Generator) -> None:
    with pytest.raises(NotFound) as caught:
        await generator.get_job("job_nope")
    assert caught.value.field == "job_id"


async def test_queued_event_comes_first(generator: Generator) -> None:
    handle = await generator.submit(request())
    events = await collect(handle)
    assert events[0] == Queued(0)
