"""The personalizer domain on both stores: job lifecycle, events, cancel, tokens, reclaim after a dead worker.

Real training on philip-tiny with few steps; no sockets (the gRPC tests cover the wire).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from philip.models.adapters import adapter_exists, load_tokenizer
from philip.rpc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from philip.store import Store
from services.personalizer.records import (
    GROUP,
    JOB_KIND,
    QUEUE,
    AdapterReady,
    JobChanged,
    SamplePreview,
    StepDone,
    TrainingEvent,
)
from services.personalizer.requests import AdapterRequest
from services.personalizer.service import Personalizer, work_dir
from services.personalizer.worker import TrainingWorker, WorkerConfig
from tests.personalizer.conftest import MODEL, reference_pngs

TOKENIZER = load_tokenizer(MODEL)


def personalizer(store: Store, tmp_path: Path) -> Personalizer:
    return Personalizer(store, tmp_path / "adapters", TOKENIZER)


def worker(p: Personalizer, consumer: str = "w1", **config: float) -> TrainingWorker:
    cfg = WorkerConfig(model_dir=str(MODEL), checkpoint_every=4, preview_every=4, heartbeat_s=0.2,
                       **config)  # type: ignore[arg-type]
    return TrainingWorker(p, cfg, consumer)


def ask(token: str = "sks", steps: int = 8, method: str = "lora") -> AdapterRequest:
    return AdapterRequest(tuple(reference_pngs(4)), token, "shape", method, steps)


async def events_of(p: Personalizer, job_id: str) -> list[TrainingEvent]:
    return [event async for event in p.watch(job_id)]


async def run_until_idle(w: TrainingWorker, stop: asyncio.Event, job_done: asyncio.Future[None]) -> None:
    task = asyncio.create_task(w.run(stop))
    try:
        await asyncio.wait_for(job_done, 180)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def finished(p: Personalizer, job_id: str) -> None:
    async for _ in p.watch(job_id):
        pass


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
async def test_job_lifecycle_produces_an_adapter(store: Store, tmp_path: Path, method: str) -> None:
    p = personalizer(store, tmp_path)
    job = await p.create(ask(method=method))
    assert job.state == "queued" and job.steps == 8 and job.job_id.startswith("tj_")
    await run_until_idle(worker(p), asyncio.Event(), asyncio.ensure_future(finished(p, job.job_id)))

    events = await events_of(p, job.job_id)  # a late watcher replays everything
    states = [e.job.state for e in events if isinstance(e, JobChanged)]
    assert states == ["queued", "running", "succeeded"]
    steps = [e.step for e in events if isinstance(e, StepDone)]
    assert steps == list(range(1, 9))
    previews = [e for e in events if isinstance(e, SamplePreview)]
    assert [e.step for e in previews] == [4, 8] and previews[0].png.startswith(b"\x89PNG")
    (ready,) = [e for e in events if isinstance(e, AdapterReady)]
    done = await p.get_job(job.job_id)
    assert (done.state, done.step, done.attempts, done.adapter_id) == ("succeeded", 8, 1, ready.adapter.adapter_id)
    adapter = await p.get_adapter(done.adapter_id)
    assert (adapter.token, adapter.method, adapter.steps) == ("sks", method, 8)
    assert [a.adapter_id for a in await p.list_adapters()] == [adapter.adapter_id]
    assert adapter_exists(p.adapters_dir, adapter.adapter_id)
    assert not work_dir(p.adapters_dir, job.job_id).exists()  # references and checkpoints cleaned up
    assert await store.pending_count(QUEUE, GROUP) == 0

    with pytest.raises(AlreadyExists, match="'sks' is in use") as held:
        await p.create(ask())  # the adapter holds the token
    assert adapter.adapter_id not in held.value.message  # it may be another tenant's: no ids
    await p.delete_adapter(adapter.adapter_id)
    assert not adapter_exists(p.adapters_dir, adapter.adapter_id)
    with pytest.raises(NotFound, match="no adapter"):
        await p.get_adapter(adapter.adapter_id)
    assert (await p.create(ask())).state == "queued"  # the token is free again


async def test_tokens_the_model_knows_or_a_queued_job_holds_are_taken(store: Store, tmp_path: Path) -> None:
    p = personalizer(store, tmp_path)
    with pytest.raises(AlreadyExists, match="'circle' is already a word the model knows"):
        await p.create(ask(token="circle"))
    first = await p.create(ask(token="zqv"))
    with pytest.raises(AlreadyExists, match="'zqv' is in use") as held:
        await p.create(ask(token="zqv"))
    assert first.job_id not in held.value.message
    await p.cancel(first.job_id)  # cancelling frees it
    assert (await p.create(ask(token="zqv"))).token == "zqv"


async def test_cancel_queued_and_running_jobs(store: Store, tmp_path: Path) -> None:
    p = personalizer(store, tmp_path)
    queued = await p.create(ask(token="aaq"))
    cancelled = await p.cancel(queued.job_id)
    assert cancelled.state == "cancelled"
    with pytest.raises(FailedPrecondition, match="already ended"):
        await p.cancel(queued.job_id)

    running = await p.create(ask(token="aar", steps=400))
    stop = asyncio.Event()
    task = asyncio.create_task(worker(p).run(stop))
    try:
        async for event in p.watch(running.job_id):
            if isinstance(event, StepDone) and event.step >= 3:
                await p.cancel(running.job_id)
                break
        await asyncio.wait_for(finished(p, running.job_id), 60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    job = await p.get_job(running.job_id)
    assert job.state == "cancelled" and job.step < 40, job  # stopped within a few steps, not trained on
    assert await store.pending_count(QUEUE, GROUP) == 0  # the queue entry of the cancelled job is acknowledged
    assert await p.list_adapters() == []


async def test_a_dead_workers_job_is_reclaimed_and_finished(store: Store, tmp_path: Path) -> None:
    p = personalizer(store, tmp_path)
    job = await p.create(ask(token="zzk"))
    # A worker takes the job, marks it running, then dies without a heartbeat or an ack.
    (entry,) = await store.claim(QUEUE, GROUP, "dead-worker")
    await store.update_record(JOB_KIND, job.job_id, {"state": "running", "worker": "dead-worker", "attempts": 1})
    await run_until_idle(worker(p, "w2", reclaim_idle_s=1.0), asyncio.Event(),
                         asyncio.ensure_future(finished(p, job.job_id)))
    done = await p.get_job(job.job_id)
    assert (done.state, done.attempts, done.worker) == ("succeeded", 2, "w2")
    assert await store.pending_count(QUEUE, GROUP) == 0
    assert entry.payload == job.job_id.encode()


async def test_unknown_and_malformed_ids(store: Store, tmp_path: Path) -> None:
    p = personalizer(store, tmp_path)
    with pytest.raises(NotFound, match="no training job tj_0000000000000000"):
        await p.get_job("tj_0000000000000000")
    with pytest.raises(InvalidArgument, match="not a valid id"):
        await p.get_job("../../etc/passwd")
    with pytest.raises(NotFound):
        await p.delete_adapter("ad_0000000000000000")
    with pytest.raises(InvalidArgument):
        await p.get_adapter("sks")


async def test_two_requests_for_one_new_token_at_once_reserve_it_exactly_once(store: Store, tmp_path: Path) -> None:
    import asyncio

    p = personalizer(store, tmp_path)
    outcomes = await asyncio.gather(*(p.create(ask(token="qxj")) for _ in range(4)), return_exceptions=True)
    created = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(created) == 1 and all(isinstance(o, AlreadyExists) for o in outcomes if o not in created)
    held = await store.get_record("adapter_token", "qxj")
    assert held == {"owner": created[0].job_id}

