"""Who may change a training job, on both stores: a cancel racing the worker that takes the job, and a worker
whose job was taken over by another.

Real concurrency: ``asyncio.gather`` of the cancel and the worker's claim-and-start, many times, with every
store call first yielding to the loop a random number of times (as a network round trip would), so that both
orders and their interleavings come up, on the in-process store as well as on Redis.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from philip.store import Store
from services.personalizer import transitions
from services.personalizer.records import ADAPTER_KIND, CANCELLED, GROUP, JOB_KIND, QUEUE, TOKEN_KIND, TrainingJob
from services.personalizer.service import Personalizer, work_dir
from tests.personalizer.support import ask, job_when, leftovers, personalizer, worker

ROUNDS = 20
MAX_ROUNDS = 60  # on a loaded machine one side may win many rounds in a row: race on until both have won


class Laggy:
    """The store, each call of which first yields to the event loop 0-3 times."""

    def __init__(self, store: Store, rng: random.Random) -> None:
        self._store, self._rng = store, rng

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr  # subscribe (an async generator), prefix

        async def call(*args: Any, **kwargs: Any) -> Any:
            for _ in range(self._rng.randint(0, 3)):
                await asyncio.sleep(0)
            return await attr(*args, **kwargs)

        return call


async def cancel_after(p: Personalizer, job_id: str, delay_s: float) -> TrainingJob:
    """A cancel that arrives ``delay_s`` later: on Redis the worker's claim takes a few round trips more than the
    cancel, and without a head start it would never be first."""
    if delay_s:
        await asyncio.sleep(delay_s)
    return await p.cancel(job_id)


async def test_a_cancel_racing_the_worker_that_takes_the_job_ends_it_cancelled_with_nothing_trained(
        store: Store, tmp_path: Path) -> None:
    rng = random.Random(22)
    adapters = tmp_path / "adapters"
    p = personalizer(Laggy(store, rng), adapters)  # type: ignore[arg-type]
    w = worker(p, "w1")
    won: Counter[str] = Counter()
    rounds = 0
    while rounds < ROUNDS or (not (won["cancel"] and won["worker"]) and rounds < MAX_ROUNDS):
        rounds += 1
        job = await p.create(ask("zqxr", steps=100))  # the same token every round: each cancel must free it
        racers = [cancel_after(p, job.job_id, rng.choice([0.0, rng.uniform(0, 0.02)])), w.take_one(asyncio.Event())]
        rng.shuffle(racers)
        await asyncio.gather(*racers)
        done = await p.get_job(job.job_id)
        assert done.state == CANCELLED and not w.busy, done
        # Stopped within a heartbeat (a step or two at most: the cancel can land just after a check), no adapter.
        assert done.step <= 3 and done.adapter_id == "", done
        assert await store.pending_count(QUEUE, GROUP) == 0  # the entry is acknowledged either way
        assert await store.get_record(TOKEN_KIND, "zqxr") is None
        won["cancel" if done.attempts == 0 else "worker"] += 1  # the worker started it, then stopped
    assert await store.list_records(ADAPTER_KIND) == []
    assert leftovers(adapters, keep="") == []  # no adapter folder, no job folder
    assert won["cancel"] and won["worker"], won  # both orders came up: the race was run


async def test_a_worker_whose_job_is_taken_over_stops_and_changes_nothing(store: Store, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    p = personalizer(store, adapters)
    job = await p.create(ask("zqxt", steps=200))
    w1, stop = worker(p, "w1"), asyncio.Event()
    task = asyncio.create_task(w1.run(stop))
    try:
        await job_when(store, job.job_id, "started")
        # What a second worker does once the entry looks abandoned: reclaim it, then take the record.
        assert await store.reclaim(QUEUE, GROUP, "w2", min_idle_ms=0)
        read = TrainingJob.from_record(await store.get_record(JOB_KIND, job.job_id) or {})
        assert await transitions.start(store, read, "w2") is not None
        taken = time.monotonic()
        taken_at = TrainingJob.from_record(await store.get_record(JOB_KIND, job.job_id) or {})
        while w1.busy:
            assert time.monotonic() - taken < 30, "w1 kept training a job it lost"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    after = TrainingJob.from_record(await store.get_record(JOB_KIND, job.job_id) or {})
    assert after == taken_at  # not ended, requeued, or moved on a step by the worker that lost it
    assert (after.state, after.worker, after.attempts) == ("running", "w2", 2)
    assert await store.pending_count(QUEUE, GROUP) == 1  # w2's entry, not acknowledged by w1
    assert await store.list_records(ADAPTER_KIND) == []
    # The checkpoint stays for w2 to resume from; nothing else is left, no partial adapter.
    assert leftovers(adapters, keep="") == [f".jobs/{job.job_id}"]
    assert (work_dir(adapters, job.job_id) / "checkpoint.pt").is_file() or after.step < 4
