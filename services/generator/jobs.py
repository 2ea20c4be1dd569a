"""Generation jobs: submit, follow, cancel, look up.

Every job has a record in the store (kind ``job``) and an event stream ``job:{job_id}`` that
receives every event (encoded by the edge's codec) and is closed at the end, so other
replicas and late readers can follow or replay it. A per-job recorder task persists each
event before handing it to the live stream, so a client that saw the result can GetJob it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from philip.clock import now_ms
from philip.generation.jobs import JOB_KIND, job_stream
from philip.generation.requests import (
    GenerationParams,
    GenerationRequest,
    RequestResolver,
    check_preview_every,
)
from philip.image_owners import record_owner
from philip.logs import bind_ids, get_logger
from philip.rpc.auth import current_tenant, owned_by_caller
from philip.rpc.errors import NotFound
from philip.store import Store, StoreError
from services.generator.batching import GenerationQueue, WorkItem
from services.generator.events import (
    Cancelled,
    Failed,
    GeneratedImage,
    JobEvent,
    Progress,
    Result,
    Started,
    is_terminal,
)
from services.generator.job_record import JobRecord, JobState

__all__ = ["EventEncoder", "GenerationParams", "GenerationRequest", "Generator", "JobHandle", "JobState", "JobView"]

log = get_logger("services.generator.jobs")

EventEncoder = Callable[[str, JobEvent], bytes]  # (job_id, event) -> bytes for the job's store stream


@dataclass(frozen=True, slots=True)
class JobView:
    """A job's status and results so far, as stored."""

    job_id: str
    state: JobState
    request: GenerationRequest
    step: int
    total_steps: int
    images: tuple[GeneratedImage, ...]
    error: str
    created_ms: int
    finished_ms: int


class JobHandle:
    """A submitted job: iterate it for events (ending with the terminal one), cancel it, tune previews."""

    def __init__(self, item: WorkItem, queue: GenerationQueue, events: asyncio.Queue[JobEvent]) -> None:
        self._item = item
        self._queue = queue
        self._events = events

    @property
    def job_id(self) -> str:
        return self._item.job_id

    @property
    def request(self) -> GenerationRequest:
        return self._item.request

    async def __aiter__(self) -> AsyncIterator[JobEvent]:
        while True:
            event = await self._events.get()
            yield event
            if is_terminal(event):
                return

    def cancel(self, reason: str = "client") -> None:
        """Cancel now if queued, within one denoising step if running; no-op once finished."""
        self._queue.cancel(self._item, reason)

    def set_preview_every(self, steps: int) -> None:
        """Preview every ``steps`` steps from now on (0 = none); InvalidArgument outside 0-100."""
        self._item.preview_every = check_preview_every(steps)


class Generator:
    """The generator service's domain: validates, queues and records generation jobs."""

    def __init__(self, store: Store, queue: GenerationQueue, resolver: RequestResolver, *,
                 encode_event: EventEncoder, blob_ttl_s: int) -> None:
        self.store = store
        self.queue = queue
        self.resolver = resolver
        self.encode_event = encode_event
        self.blob_ttl_s = blob_ttl_s
        self._recorders: set[asyncio.Task[None]] = set()

    def resolve(self, params: GenerationParams) -> GenerationRequest:
        """Validate and fill in defaults (InvalidArgument naming the field otherwise)."""
        return self.resolver.resolve(params)

    async def submit(self, request: GenerationRequest) -> JobHandle:
        """Queue a job (ResourceExhausted when the queue is full) and start recording its events."""
        job_id = f"job_{uuid.uuid4().hex}"
        inbox: asyncio.Queue[JobEvent] = asyncio.Queue()
        item = WorkItem(job_id, request, emit=inbox.put_nowait, preview_every=request.preview_every)
        self.queue.submit(item)  # first, so a full queue costs no store writes
        record = JobRecord(JobState.QUEUED, request, created_ms=now_ms(), tenant=current_tenant())
        try:
            await self.store.put_record(JOB_KIND, job_id, record.to_record(), ttl_s=self.blob_ttl_s)
        except BaseException:
            self.queue.cancel(item, "client")
            raise
        outbox: asyncio.Queue[JobEvent] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._record(job_id, inbox, outbox), name=f"record-{job_id}")
        self._recorders.add(task)
        task.add_done_callback(self._recorders.discard)
        log.info("job.submitted", job_id=job_id, images=request.num_images, steps=request.steps,
                 size=f"{request.width}x{request.height}", queued=self.queue.queued)
        return JobHandle(item, self.queue, outbox)

    async def get_job(self, job_id: str) -> JobView:
        stored = await self.store.get_record(JOB_KIND, job_id)
        if stored is None or not owned_by_caller(stored):  # another tenant's job reads as unknown
            raise NotFound(f"no job {job_id!r} (unknown or expired)", field="job_id")
        record = JobRecord.from_record(stored)
        images = []
        for meta in record.images:
            png = await self.store.get_blob(meta.id)
            if png is not None:  # an expired blob simply drops out
                images.append(GeneratedImage(png=png, **dataclasses.asdict(meta)))
        return JobView(job_id, record.state, record.request, record.step, record.request.steps, tuple(images),
                       record.error, record.created_ms, record.finished_ms)

    async def close(self) -> None:
        """Cancel queued and running jobs ("shutdown") and wait until their final events are recorded."""
        await self.queue.close("shutdown")
        if self._recorders:
            await asyncio.wait(list(self._recorders), timeout=10)

    # ---- recording -------------------------------------------------------------------------------

    async def _record(self, job_id: str, inbox: asyncio.Queue[JobEvent], outbox: asyncio.Queue[JobEvent]) -> None:
        with bind_ids(job_id=job_id):
            started = time.monotonic()
            while True:
                event = await inbox.get()
                try:
                    event = await self._persist(job_id, event)
                except StoreError as exc:
                    # The live stream still gets everything; only GetJob/replay miss this event.
                    log.warning("job.store_failed", step=type(event).__name__, error=str(exc))
                outbox.put_nowait(event)
                if is_terminal(event):
                    break
            try:
                await self.store.close_stream(job_stream(job_id))
                await self.store.expire_stream(job_stream(job_id), self.blob_ttl_s)
            except StoreError as exc:
                log.warning("job.store_failed", step="close_stream", error=str(exc))
            log.info("job.finished", outcome=type(event).__name__, duration_s=round(time.monotonic() - started, 3))

    async def _persist(self, job_id: str, event: JobEvent) -> JobEvent:
        """Update the record for ``event`` and append it to the job's stream; returns it with image ids set."""
        if isinstance(event, Result):
            event = Result(tuple(dataclasses.replace(image, id=f"img_{uuid.uuid4().hex}") for image in event.images))
            for image in event.images:
                await self.store.put_blob(image.id, image.png, self.blob_ttl_s)
                await record_owner(self.store, image.id, self.blob_ttl_s, job_id=job_id)
        fields = _record_fields(event)
        if fields:
            await self.store.update_record(JOB_KIND, job_id, fields)
        await self.store.append_event(job_stream(job_id), self.encode_event(job_id, event))
        return event


def _record_fields(event: JobEvent) -> dict[str, Any]:
    if isinstance(event, Started):
        return {"state": JobState.RUNNING.value}
    if isinstance(event, Progress):
        return {"step": event.step, "total_steps": event.total_steps}
    if isinstance(event, Result):
        images = [{"id": i.id, "width": i.width, "height": i.height, "seed": i.seed, "index": i.index}
                  for i in event.images]
        return {"state": JobState.SUCCEEDED.value, "images": images, "finished_ms": now_ms()}
    if isinstance(event, Failed):
        return {"state": JobState.FAILED.value, "error": event.message, "finished_ms": now_ms()}
    if isinstance(event, Cancelled):
        # Job.error is for failures only; the reason is kept for operators.
        return {"state": JobState.CANCELLED.value, "cancel_reason": event.reason, "finished_ms": now_ms()}
    return {}
