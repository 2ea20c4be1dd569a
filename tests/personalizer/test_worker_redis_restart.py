"""A Redis restart in the middle of a training job, on a real redis-server (its own port, AOF on) killed and
started again while one of two workers trains: the job ends with exactly one adapter and nothing left behind.

Short outage (under the reclaim idle time): the training worker rides it out (heartbeat and events retried) and
finishes; nobody takes the job over. Long outage (over it): the worker stops training, since another may take
the job, and one worker resumes it from the checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from philip.models.adapters import adapter_exists
from philip.store import RedisStore
from services.personalizer.records import ADAPTER_KIND, GROUP, QUEUE, SUCCEEDED
from services.personalizer.trainer import AdapterTrainer
from tests.personalizer.redis_server import INSTALLED, RedisServer
from tests.personalizer.support import ask, job_when, leftovers, personalizer, worker

pytestmark = pytest.mark.skipif(not INSTALLED, reason="redis-server not installed")

STEPS, STEP_S = 12, 0.4  # at least 11 x 0.4 s of training left after the first step: longer than either outage


@pytest.fixture(autouse=True)
def paced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each training step lasts at least STEP_S, so that the outage falls in the middle of the training
    however fast the machine is today."""
    step = AdapterTrainer.train_step

    def slow_step(self: AdapterTrainer) -> float:
        began = time.monotonic()
        loss = step(self)
        time.sleep(max(0.0, STEP_S - (time.monotonic() - began)))
        return loss

    monkeypatch.setattr(AdapterTrainer, "train_step", slow_step)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[list[RedisStore]]:
    # One store per worker, as two processes would have; no client-side retries, so the outage reaches the worker.
    made = [RedisStore(redis_server.url, prefix="philip-test:", socket_timeout=2.0, retries=0) for _ in range(2)]
    try:
        yield made
    finally:
        for store in made:
            await store.close()


@pytest.mark.parametrize(("outage_s", "reclaim_idle_s"), [(2.5, 12.0), (5.0, 3.0)], ids=["short", "long"])
async def test_a_redis_restart_mid_training_ends_with_one_adapter_and_no_orphans(
        redis_server: RedisServer, stores: list[RedisStore], tmp_path: Path, outage_s: float,
        reclaim_idle_s: float) -> None:
    adapters = tmp_path / "adapters"
    p1, p2 = (personalizer(store, adapters) for store in stores)
    job = await p1.create(ask("rsk", steps=STEPS))
    stop = asyncio.Event()
    workers = [worker(p1, "w1", reclaim_idle_s), worker(p2, "w2", reclaim_idle_s)]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        await job_when(stores[0], job.job_id, "started")
        redis_server.kill()
        await asyncio.sleep(outage_s)
        if outage_s < reclaim_idle_s:
            assert any(w.busy for w in workers)  # the restart comes while the job trains (on; the long one stopped)
        redis_server.start()
        done = await job_when(stores[0], job.job_id, "ended")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)

    assert done.state == SUCCEEDED, done
    assert await stores[0].list_records(ADAPTER_KIND) == [done.adapter_id]  # exactly one adapter, the job's
    assert adapter_exists(adapters, done.adapter_id)
    assert leftovers(adapters, keep=done.adapter_id) == []  # no second or partial adapter, no job folder
    assert await stores[0].pending_count(QUEUE, GROUP) == 0
    # Short: trained once, never taken over. Long: given up once and resumed (a takeover race may add one).
    assert done.attempts == 1 if outage_s < reclaim_idle_s else done.attempts in (2, 3), done
