"""Helpers of the training-worker tests: a worker on philip-tiny with few steps, waiting on a job's record."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from philip.models.adapters import load_tokenizer
from philip.store import Store, StoreUnavailable
from services.personalizer.records import JOB_KIND, TrainingJob
from services.personalizer.requests import AdapterRequest
from services.personalizer.service import Personalizer
from services.personalizer.worker import TrainingWorker, WorkerConfig
from tests.personalizer.conftest import MODEL, reference_pngs

TOKENIZER = load_tokenizer(MODEL)


def personalizer(store: Store, adapters: Path) -> Personalizer:
    return Personalizer(store, adapters, TOKENIZER)


def worker(p: Personalizer, consumer: str, reclaim_idle_s: float = 60.0) -> TrainingWorker:
    # No previews: the steps alone make the job last long enough, and are what the tests count.
    cfg = WorkerConfig(model_dir=str(MODEL), checkpoint_every=4, preview_every=0, heartbeat_s=0.2,
                       reclaim_idle_s=reclaim_idle_s)
    return TrainingWorker(p, cfg, consumer)


def ask(token: str, steps: int = 8) -> AdapterRequest:
    return AdapterRequest(tuple(reference_pngs(4)), token, "shape", "lora", steps)


async def job_when(store: Store, job_id: str, done: str, timeout_s: float = 240.0) -> TrainingJob:
    """Poll the job's record until ``done`` ("started": a step trained; "ended": terminal); a store that is
    down meanwhile (the test restarts it) is waited out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = await store.get_record(JOB_KIND, job_id)
        except StoreUnavailable:
            data = None
        if data is not None:
            job = TrainingJob.from_record(data)
            if job.terminal or (done == "started" and job.step >= 1):
                return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} not {done} within {timeout_s} s")


def leftovers(adapters: Path, keep: str) -> list[str]:
    """What is under the adapters folder besides the adapter ``keep``: partial exports, job folders."""
    found = [p.name for p in adapters.iterdir() if p.name not in (keep, ".jobs")] if adapters.exists() else []
    jobs = adapters / ".jobs"
    return found + ([f".jobs/{p.name}" for p in jobs.iterdir()] if jobs.exists() else [])
