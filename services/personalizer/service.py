"""The personalizer's domain: accept training jobs, report on them, manage adapters.

Jobs are queued in the store (``records.QUEUE``) and trained by ``TrainingWorker``s, in this
process or others; everything a caller sees (job state, events, adapters) comes from the store,
so any replica answers for any job. Reference images and checkpoints live in the job's work
folder under ``{adapters_dir}/.jobs/`` (a shared volume when workers run on several machines).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image

from philip.activity import ActivityLog
from philip.logs import get_logger
from philip.models.adapter_support import method_refusal
from philip.models.adapters import adapter_dir, token_in_vocabulary
from philip.models.families import SD, Family
from philip.quotas import TRAINING_JOBS, Quotas
from philip.rpc.auth import current_tenant, owned_by_caller
from philip.rpc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from philip.store import Store
from services.personalizer import records, transitions
from services.personalizer.records import (
    ADAPTER_KIND,
    JOB_KIND,
    QUEUE,
    TOKEN_KIND,
    Adapter,
    JobChanged,
    TrainingEvent,
    TrainingJob,
    decode_event,
    encode_event,
    job_stream,
)
from services.personalizer.requests import AdapterRequest, validate

log = get_logger("services.personalizer")

EVENTS_TTL_S = 7 * 24 * 3600  # a finished job's events stay readable for a week
# A job holds its tenant's quota slot from creation to its end (released by ``finish``); the lease
# only bounds how long a slot can outlive a job whose bookkeeping was lost.
QUOTA_LEASE_S = 24 * 3600.0
CANCEL_TRIES = 5  # each retry means a worker changed the job just then; five in a row does not happen


def work_dir(adapters_dir: str | Path, job_id: str) -> Path:
    return Path(adapters_dir) / ".jobs" / job_id


def reference_paths(folder: Path) -> list[Path]:
    return sorted((folder / "refs").glob("*.png"))


class Personalizer:
    """Training jobs and adapters, backed by the store and the adapters folder."""

    def __init__(self, store: Store, adapters_dir: str | Path, tokenizer: Any, *, quotas: Quotas | None = None,
                 activity: ActivityLog | None = None, family: Family = SD) -> None:
        self.store = store
        self.adapters_dir = Path(adapters_dir)
        self.tokenizer = tokenizer
        self.family = family  # the served model's: what its adapters can be (adapter_support.METHODS)
        self.quotas = quotas or Quotas(store, {})
        self.activity = activity or ActivityLog(store)

    # ---- jobs ----------------------------------------------------------------------------------

    async def create(self, request: AdapterRequest) -> TrainingJob:
        """Validate, save the references, reserve the token and queue the job."""
        valid = await asyncio.to_thread(validate, request)  # decoding 7 large photos takes a while
        refusal = method_refusal(self.family, valid.method)
        if refusal is not None:  # here, not in a worker that would load the model only to fail
            raise InvalidArgument(refusal, field="method")
        if token_in_vocabulary(self.tokenizer, valid.token):
            raise AlreadyExists(f"token {valid.token!r} is already a word the model knows; choose a made-up word "
                                "such as 'sks' or 'zqv'", field="token")
        job = TrainingJob(records.new_job_id(), valid.token, valid.class_word, valid.method, valid.steps, valid.rank,
                          tenant=current_tenant())
        await self.quotas.acquire(TRAINING_JOBS, job.job_id, QUOTA_LEASE_S)
        try:
            await self._reserve_token(valid.token, job.job_id)
        except BaseException:
            await self.quotas.release(TRAINING_JOBS, job.job_id)
            raise
        try:
            await asyncio.to_thread(_save_references, work_dir(self.adapters_dir, job.job_id), valid.images)
            await self.store.put_record(JOB_KIND, job.job_id, job.to_record())
            await self.publish(job.job_id, JobChanged(job))
            await self.store.enqueue(QUEUE, job.job_id.encode())
        except BaseException:
            await self.store.delete_record(TOKEN_KIND, valid.token)
            await self.quotas.release(TRAINING_JOBS, job.job_id)
            raise
        log.info("training.queued", job_id=job.job_id, token=job.token, method=job.method, steps=job.steps)
        await self.activity.record("training.created", job.job_id, token=job.token, method=job.method,
                                   steps=job.steps)
        return job

    async def get_job(self, job_id: str) -> TrainingJob:
        data = await self.store.get_record(JOB_KIND, _checked(job_id, "tj_", "job_id"))
        if data is None or not owned_by_caller(data):  # another tenant's job reads as unknown
            raise NotFound(f"no training job {job_id}", field="job_id")
        return TrainingJob.from_record(data)

    async def watch(self, job_id: str) -> AsyncIterator[TrainingEvent]:
        """Every event of the job from the start, then live ones until it ends."""
        await self.get_job(job_id)
        async for entry in self.store.subscribe(job_stream(job_id)):
            yield decode_event(entry.payload)

    async def cancel(self, job_id: str) -> TrainingJob:
        """A queued job ends now; a running one is flagged and its worker stops at the next step.

        Both are compare-and-set on the record (``transitions``): a cancel racing a worker that takes the job
        either ends it first (the worker then finds it ended and trains nothing) or flags it once the worker
        has it (and that worker stops, and never commits an adapter for it).
        """
        for _ in range(CANCEL_TRIES):
            job = await self.get_job(job_id)
            if job.terminal:
                raise FailedPrecondition(f"training job {job_id} already ended ({job.state})", field="job_id")
            if job.state == records.QUEUED:
                why = "cancelled by the client" + (" before it started" if job.attempts == 0 else "")
                if (ended := await transitions.cancel_queued(self.store, job_id, why)) is not None:
                    await self.finish(ended)
                    return ended
            elif (flagged := await transitions.flag_cancel(self.store, job_id)) is not None:
                return flagged
            # The record changed between the read and the change (a worker took or handed back the job): again.
        raise FailedPrecondition(f"training job {job_id} kept changing while being cancelled; try again",
                                 field="job_id")

    async def publish(self, job_id: str, event: TrainingEvent) -> None:
        await self.store.append_event(job_stream(job_id), encode_event(event))

    async def finish(self, job: TrainingJob) -> None:
        """Terminal bookkeeping shared with the worker: free the token on failure, clean up, last event.

        The token and the quota slot are freed before the last event is published, so a client that sees the
        job end and at once retries (the same token, or another job) is not refused for what just ended.
        """
        if job.state != records.SUCCEEDED:
            await self._release_token(job.token, job.job_id)
        await asyncio.to_thread(shutil.rmtree, work_dir(self.adapters_dir, job.job_id), True)
        await self.quotas.release(TRAINING_JOBS, job.job_id, tenant=job.tenant)
        await self.publish(job.job_id, JobChanged(job))
        await self.store.close_stream(job_stream(job.job_id))
        await self.store.expire_stream(job_stream(job.job_id), EVENTS_TTL_S)
        details = {"adapter_id": job.adapter_id} if job.adapter_id else {"error": job.error}
        await self.activity.record(f"training.{job.state}", job.job_id, tenant=job.tenant, token=job.token,
                                   **details)

    # ---- adapters ------------------------------------------------------------------------------

    async def list_adapters(self) -> list[Adapter]:
        found = []
        for adapter_id in await self.store.list_records(ADAPTER_KIND):
            data = await self.store.get_record(ADAPTER_KIND, adapter_id)
            if data is not None and owned_by_caller(data):
                found.append(Adapter.from_record(data))
        return sorted(found, key=lambda a: a.created_ms, reverse=True)

    async def get_adapter(self, adapter_id: str) -> Adapter:
        data = await self.store.get_record(ADAPTER_KIND, _checked(adapter_id, "ad_", "adapter_id"))
        if data is None or not owned_by_caller(data):
            raise NotFound(f"no adapter {adapter_id}; ListAdapters shows the ones that exist", field="adapter_id")
        return Adapter.from_record(data)

    async def delete_adapter(self, adapter_id: str) -> None:
        adapter = await self.get_adapter(adapter_id)
        await self.store.delete_record(ADAPTER_KIND, adapter_id)
        await self._release_token(adapter.token, adapter_id)
        await asyncio.to_thread(shutil.rmtree, adapter_dir(self.adapters_dir, adapter_id), True)
        log.info("adapter.deleted", adapter_id=adapter_id, token=adapter.token)
        await self.activity.record("adapter.deleted", adapter_id, token=adapter.token)

    async def register_adapter(self, adapter: Adapter) -> None:
        await self.store.put_record(ADAPTER_KIND, adapter.adapter_id, adapter.to_record())
        await self.store.put_record(TOKEN_KIND, adapter.token, {"owner": adapter.adapter_id})

    # ---- tokens --------------------------------------------------------------------------------

    async def _reserve_token(self, token: str, owner: str) -> None:
        # One atomic SET NX: of two requests for one new token exactly one wins, on any replica. The message names
        # no owner: the token may be another tenant's.
        if not await self.store.create_record(TOKEN_KIND, token, {"owner": owner}):
            raise AlreadyExists(f"token {token!r} is in use; choose another, or DeleteAdapter your adapter that has "
                                "it first", field="token")

    async def _release_token(self, token: str, owner: str) -> None:
        held = await self.store.get_record(TOKEN_KIND, token)
        if held is not None and held["owner"] == owner:
            await self.store.delete_record(TOKEN_KIND, token)


def _checked(value: str, prefix: str, field: str) -> str:
    if not value.startswith(prefix) or not 8 <= len(value) <= 64 or not value[len(prefix):].isalnum():
        raise InvalidArgument(f"{field} {value!r} is not a valid id (expected {prefix}...)", field=field)
    return value


def _save_references(folder: Path, images: tuple[Image.Image, ...]) -> None:
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / "refs" / f"{i}.png")
