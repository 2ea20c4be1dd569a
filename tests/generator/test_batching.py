"""The generation queue without gRPC or torch: merging, ordering, capacity and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from philip.rpc.errors import ResourceExhausted
from services.generator.batching import GenerationQueue, WorkItem
from services.generator.events import Cancelled, Failed, JobEvent, Queued, Result, Started, is_terminal
from tests.generator.fakes import FakeEngine, request


class Job:
    """A WorkItem plus the events it received."""

    def __init__(self, name: str, **changes: object) -> None:
        self.events: list[JobEvent] = []
        self.finished = asyncio.Event()
        self.item = WorkItem(name, request(**changes), emit=self._emit)

    def _emit(self, event: JobEvent) -> None:
        self.events.append(event)
        if is_terminal(event):
            self.finished.set()

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def make_queue(engine: FakeEngine, **overrides: int) -> GenerationQueue:
    options = {"max_queue": 8, "max_batch": 8, "batch_window_ms": 30, **overrides}
    return GenerationQueue(engine, **options)


async def started(job: Job) -> None:
    async def poll() -> None:
        while not job.of(Started):
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), 5)


async def finish(*jobs: Job) -> None:
    await asyncio.wait_for(asyncio.gather(*(job.finished.wait() for job in jobs)), 5)


async def test_compatible_requests_share_one_batch() -> None:
    engine = FakeEngine()
    queue = make_queue(engine)
    a, b, c = Job("a", num_images=2), Job("b", num_images=3, prompt="a blue star", seed=9), Job("c", num_images=1)
    for job in (a, b, c):
        queue.submit(job.item)
    await finish(a, b, c)
    assert engine.batches == [["a", "b", "c"]]
    assert all(job.of(Started) == [Started(6)] for job in (a, b, c))
    assert [len(job.of(Result)[0].images) for job in (a, b, c)] == [2, 3, 1]  # split back per request
    await queue.close()


@pytest.mark.parametrize(
    "changes",
    [{"steps": 5}, {"width": 32, "height": 32}, {"guidance": 7.0}, {"scheduler": "euler"},
     {"preview_mode": "vae"}],
)
async def test_incompatible_requests_wait_for_the_next_batch(changes: dict) -> None:
    engine = FakeEngine()
    queue = make_queue(engine)
    a, b, c = Job("a"), Job("b", **changes), Job("c")
    for job in (a, b, c):
        queue.submit(job.item)
    await finish(a, b, c)
    assert engine.batches == [["a", "c"], ["b"]]  # c (compatible with a) joins a; b waits
    await queue.close()


async def test_batch_never_exceeds_max_batch_images() -> None:
    engine = FakeEngine()
    queue = make_queue(engine, max_batch=6)
    jobs = [Job(name, num_images=3) for name in "abc"]
    for job in jobs:
        queue.submit(job.item)
    await finish(*jobs)
    assert engine.batches == [["a", "b"], ["c"]]
    await queue.close()


async def test_full_batch_leaves_before_the_window() -> None:
    engine = FakeEngine()
    queue = make_queue(engine, max_batch=2, batch_window_ms=10_000)
    a, b = Job("a"), Job("b")
    queue.submit(a.item)
    queue.submit(b.item)
    await finish(a, b)  # a 10 s window would time this out
    await queue.close()


async def test_queue_full_is_resource_exhausted_with_a_hint() -> None:
    engine = FakeEngine(step_s=0.05)
    queue = make_queue(engine, max_queue=2, batch_window_ms=0)
    running = Job("running", steps=20)
    queue.submit(running.item)
    await started(running)
    waiting = [Job("w1", steps=3), Job("w2", steps=3)]
    for job in waiting:
        queue.submit(job.item)
    with pytest.raises(ResourceExhausted) as caught:
        queue.submit(Job("rejected").item)
    assert "2 jobs queued" in caught.value.message
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
    await queue.close()


async def test_positions_are_announced_and_updated() -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine, batch_window_ms=0)
    first, second, third = Job("first", steps=5), Job("second", steps=6), Job("third", steps=7)
    for job in (first, second, third):
        queue.submit(job.item)
    await finish(first, second, third)
    assert first.of(Queued) == [Queued(0)]
    assert second.of(Queued) == [Queued(1), Queued(0)]
    assert third.of(Queued) == [Queued(2), Queued(1), Queued(0)]
    assert engine.batches == [["first"], ["second"], ["third"]]
    await queue.close()


async def test_cancel_queued_job_removes_it_at_once() -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine, batch_window_ms=0)
    running, doomed, after = Job("running", steps=5), Job("doomed", steps=6), Job("after", steps=7)
    for job in (running, doomed, after):
        queue.submit(job.item)
    await started(running)
    queue.cancel(doomed.item, "client")
    assert doomed.events[-1] == Cancelled("client") and queue.queued == 1
    await finish(running, after)
    assert ["doomed"] not in engine.batches
    assert after.of(Queued)[-1] == Queued(0)  # moved up when doomed left
    await queue.close()


async def test_cancel_running_job_is_dropped_but_its_batch_mates_finish() -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine)
    a, b = Job("a", steps=20), Job("b", steps=20)
    queue.submit(a.item)
    queue.submit(b.item)
    await started(a)
    queue.cancel(a.item, "deadline")
    await finish(a, b)
    assert a.events[-1] == Cancelled("deadline") and not a.of(Result)
    assert b.of(Result)
    await queue.close()


async def test_runner_failure_fails_every_job_of_the_batch() -> None:
    queue = make_queue(FakeEngine(fail=True))
    a, b = Job("a"), Job("b")
    queue.submit(a.item)
    queue.submit(b.item)
    await finish(a, b)
    assert all(isinstance(job.events[-1], Failed) and "boom" in job.events[-1].message for job in (a, b))
    await queue.close()


async def test_close_cancels_everything_with_shutdown() -> None:
    queue = make_queue(FakeEngine(step_s=0.02), batch_window_ms=0)
    running, waiting = Job("running", steps=50), Job("waiting", steps=3)
    queue.submit(running.item)
    queue.submit(waiting.item)
    await started(running)
    await asyncio.wait_for(queue.close(), 2)
    assert running.events[-1] == Cancelled("shutdown") and waiting.events[-1] == Cancelled("shutdown")
    with pytest.raises(ResourceExhausted, match="shutting down"):
        queue.submit(Job("late").item)
