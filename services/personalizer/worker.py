"""A training worker: takes jobs from the store queue, trains them on a thread, reports every step.

Delivery is at-least-once through the queue's consumer group: a job stays pending until its
worker acknowledges it at a terminal state. While training, the worker touches its entry every
``heartbeat_s``; a worker that dies stops touching, and after ``reclaim_idle_s`` another worker
takes the entry over (``Store.reclaim``, XAUTOCLAIM on Redis) and resumes from the last checkpoint
in the job's work folder. A worker that finds its entry taken stops without acknowledging.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from dataclasses import dataclass

from PIL import Image

from philip import metrics
from philip.images import png_bytes
from philip.logs import bind_ids, get_logger
from philip.models.adapters import adapter_dir
from philip.store import Store, StoreError
from services.personalizer import records
from services.personalizer.records import (
    CANCELLED,
    FAILED,
    GROUP,
    JOB_KIND,
    QUEUE,
    RUNNING,
    SUCCEEDED,
    Adapter,
    AdapterReady,
    JobChanged,
    SamplePreview,
    StepDone,
    TrainingEvent,
    TrainingJob,
)
from services.personalizer.service import Personalizer, reference_paths, work_dir
from services.personalizer.trainer import AdapterTrainer, TrainConfig, TrainingStopped, TrainProgress

log = get_logger("services.personalizer.worker")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    model_dir: str
    device: str = "cpu"
    reclaim_idle_s: float = 60.0
    heartbeat_s: float = 1.0
    checkpoint_every: int = 50
    preview_every: int = 100


class TrainingWorker:
    """One consumer of the training queue; trains one job at a time."""

    def __init__(self, personalizer: Personalizer, config: WorkerConfig, consumer: str) -> None:
        self.personalizer = personalizer
        self.store: Store = personalizer.store
        self.config = config
        self.consumer = consumer
        self.busy = False

    async def run(self, stop: asyncio.Event) -> None:
        """Take and train jobs until ``stop`` is set; a job in progress then goes back to the queue."""
        log.info("worker.started", consumer=self.consumer)
        while not stop.is_set():
            try:
                entries = await self.store.reclaim(QUEUE, GROUP, self.consumer,
                                                   min_idle_ms=int(self.config.reclaim_idle_s * 1000), count=1)
                if entries:
                    log.warning("worker.reclaimed", consumer=self.consumer, entry=entries[0].id)
                else:
                    entries = await self.store.claim(QUEUE, GROUP, self.consumer, count=1, block_ms=500)
                for entry in entries:
                    await self.process(entry.id, entry.payload.decode(), stop)
            except StoreError as exc:  # store down: wait and retry, the job is still pending
                log.warning("worker.store_error", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

    async def process(self, entry_id: str, job_id: str, stop: asyncio.Event) -> None:
        data = await self.store.get_record(JOB_KIND, job_id)
        if data is None or TrainingJob.from_record(data).terminal:  # cancelled while queued, or expired
            await self.store.ack(QUEUE, GROUP, entry_id)
            return
        job = TrainingJob.from_record(data)
        job = job.with_(state=RUNNING, worker=self.consumer, attempts=job.attempts + 1)
        await self.store.put_record(JOB_KIND, job_id, job.to_record())
        await self.personalizer.publish(job_id, JobChanged(job))
        with bind_ids(job_id=job_id):
            log.info("training.started", consumer=self.consumer, attempt=job.attempts, token=job.token)
            self.busy = True
            metrics.TRAINING_RUNNING.set(1)
            try:
                await self._train(entry_id, job, stop)
            finally:
                self.busy = False
                metrics.TRAINING_RUNNING.set(0)

    async def _train(self, entry_id: str, job: TrainingJob, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        halt = threading.Event()
        reason: list[str] = []
        events: asyncio.Queue[TrainingEvent | None] = asyncio.Queue()
        folder = work_dir(self.personalizer.adapters_dir, job.job_id)

        def on_progress(p: TrainProgress) -> None:  # worker thread
            for event in _to_events(p):
                loop.call_soon_threadsafe(events.put_nowait, event)

        def train() -> tuple[AdapterTrainer, dict[str, float]]:
            images = [Image.open(path).convert("RGB") for path in reference_paths(folder)]
            cfg = TrainConfig(token=job.token, class_word=job.class_word, method=job.method, steps=job.steps,
                              rank=job.rank, checkpoint_every=self.config.checkpoint_every,
                              preview_every=self.config.preview_every)
            trainer = AdapterTrainer(self.config.model_dir, cfg, images, folder, self.config.device)
            return trainer, trainer.run(on_progress, should_stop=halt.is_set)

        async def pump() -> None:
            while (event := await events.get()) is not None:
                await self.personalizer.publish(job.job_id, event)
                if isinstance(event, StepDone):
                    await self.store.update_record(JOB_KIND, job.job_id, {"step": event.step})

        async def watchdog() -> None:
            while not halt.is_set():
                await asyncio.sleep(min(self.config.heartbeat_s, 0.25))
                if stop.is_set():
                    reason.append("shutdown")
                elif not await self.store.touch(QUEUE, GROUP, self.consumer, entry_id):
                    reason.append("lost")
                else:
                    current = await self.store.get_record(JOB_KIND, job.job_id)
                    if current is None or current.get("cancel_requested") or current.get("worker") != self.consumer:
                        reason.append("cancelled" if current and current.get("cancel_requested") else "lost")
                if reason:
                    halt.set()

        pumping = asyncio.create_task(pump())
        watching = asyncio.create_task(watchdog())
        try:
            trainer, stats = await asyncio.to_thread(train)
            adapter_id = records.new_adapter_id()
            await asyncio.to_thread(trainer.export, adapter_dir(self.personalizer.adapters_dir, adapter_id), adapter_id,
                                    job.tenant)
        except TrainingStopped:
            await self._stopped(entry_id, job, reason[0] if reason else "shutdown")
            return
        except Exception as exc:
            log.exception("training.failed", consumer=self.consumer)
            await self._end(entry_id, job.with_(state=FAILED, error=f"training failed: {exc}"))
            return
        finally:
            halt.set()
            events.put_nowait(None)
            await pumping
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        adapter = Adapter(adapter_id, job.token, job.class_word, job.method, job.job_id, job.steps, tenant=job.tenant)
        await self.personalizer.register_adapter(adapter)
        await self.personalizer.publish(job.job_id, AdapterReady(adapter))
        log.info("training.succeeded", adapter_id=adapter_id, train_s=round(stats["train_s"], 1),
                 final_loss=stats["final_loss"], resumed_from=stats["resumed_from"])
        await self._end(entry_id, job.with_(state=SUCCEEDED, step=job.steps, adapter_id=adapter_id))

    async def _stopped(self, entry_id: str, job: TrainingJob, why: str) -> None:
        if why == "cancelled":
            await self._end(entry_id, job.with_(state=CANCELLED, error="cancelled by the client"))
        elif why == "shutdown":
            # Hand the job straight to another worker (it resumes from the checkpoint) instead of
            # leaving it pending until the reclaim idle time passes.
            log.info("training.requeued", consumer=self.consumer)
            current = await self.store.get_record(JOB_KIND, job.job_id) or job.to_record()
            queued = TrainingJob.from_record(current).with_(state=records.QUEUED, worker="")
            await self.store.put_record(JOB_KIND, job.job_id, queued.to_record())
            await self.personalizer.publish(job.job_id, JobChanged(queued))
            await self.store.enqueue(QUEUE, job.job_id.encode())
            await self.store.ack(QUEUE, GROUP, entry_id)
        else:  # lost the entry to another worker: it owns the job now; don't touch the record
            log.warning("training.lost", consumer=self.consumer)

    async def _end(self, entry_id: str, job: TrainingJob) -> None:
        current = await self.store.get_record(JOB_KIND, job.job_id)
        if current is not None:
            job = job.with_(step=max(job.step, int(current.get("step", 0))))
        await self.store.put_record(JOB_KIND, job.job_id, job.to_record())
        await self.personalizer.finish(job)
        await self.store.ack(QUEUE, GROUP, entry_id)
        metrics.TRAINING_JOBS.labels(job.state).inc()
        log.info("training.ended", state=job.state, error=job.error or None)


def _to_events(p: TrainProgress) -> list[TrainingEvent]:
    out: list[TrainingEvent] = [StepDone(p.step, p.total, p.loss if math.isfinite(p.loss) else 0.0,
                                         p.resumed_from or 0)]
    if p.preview is not None:
        out.append(SamplePreview(p.step, png_bytes(p.preview), p.preview.width, p.preview.height))
    return out
