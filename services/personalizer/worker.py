"""A training worker: takes jobs from the store queue, trains them on a thread, reports every step.

Delivery is at-least-once through the queue's consumer group: a job stays pending until its
worker acknowledges it at a terminal state. While training, the worker touches its entry every
``heartbeat_s``; a worker that dies stops touching, and after ``reclaim_idle_s`` another worker
takes the entry over (``Store.reclaim``, XAUTOCLAIM on Redis) and resumes from the last checkpoint
in the job's work folder. A worker that finds its entry taken stops without acknowledging.

A store outage (a Redis restart) is ridden out: the heartbeat and the event pump retry with backoff
(``attempt.py``); the training stops only when the job is really lost, or the store has failed for
nearly ``reclaim_idle_s`` (another worker may then have taken it). Every change of the job record is a
compare-and-set (``transitions.py``), so of a cancel, this worker and one taking over, none overwrites
another. The adapter is written into the job's work folder and renamed into the adapters folder only
once the job's record says it succeeded with that adapter: an abandoned or half-written attempt never
shows up as an adapter, and its files go with the work folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from philip import metrics
from philip.logs import bind_ids, get_logger
from philip.models.adapters import adapter_dir
from philip.store import Store, StoreError
from services.personalizer import records, transitions
from services.personalizer.attempt import CANCELLED as HALT_CANCELLED
from services.personalizer.attempt import SHUTDOWN, Attempt
from services.personalizer.records import (
    CANCELLED,
    FAILED,
    GROUP,
    JOB_KIND,
    QUEUE,
    SUCCEEDED,
    Adapter,
    AdapterReady,
    JobChanged,
    TrainingJob,
)
from services.personalizer.retrying import Backoff, retrying
from services.personalizer.service import Personalizer, reference_paths, work_dir
from services.personalizer.trainer import AdapterTrainer, TrainConfig, TrainingStopped

log = get_logger("services.personalizer.worker")
T = TypeVar("T")

CANCEL_ERROR = "cancelled by the client"
START_TRIES = 3  # re-reads of a record that changed under a start; more means others are busy with the job


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    model_dir: str
    device: str = "cpu"
    reclaim_idle_s: float = 60.0
    heartbeat_s: float = 1.0
    checkpoint_every: int = 50
    preview_every: int = 100

    @property
    def give_up_s(self) -> float:
        """How long the store may fail before a training stops: a little under ``reclaim_idle_s``, because the
        store counts idle time from when it applied the last touch, which the worker hears of a while later."""
        return max(self.heartbeat_s, self.reclaim_idle_s - 2 * self.heartbeat_s)


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
                await self.take_one(stop)
            except StoreError as exc:  # store down: wait and retry, the job is still pending
                log.warning("worker.store_error", consumer=self.consumer, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

    async def take_one(self, stop: asyncio.Event, block_ms: int = 500) -> bool:
        """Reclaim an entry another worker abandoned, or claim a new one, and process it; False if none came."""
        entries = await self.store.reclaim(QUEUE, GROUP, self.consumer,
                                           min_idle_ms=int(self.config.reclaim_idle_s * 1000), count=1)
        if entries:
            log.warning("worker.reclaimed", consumer=self.consumer, entry=entries[0].id)
        else:
            entries = await self.store.claim(QUEUE, GROUP, self.consumer, count=1, block_ms=block_ms)
        for entry in entries:
            await self.process(entry.id, entry.payload.decode(), stop)
        return bool(entries)

    async def process(self, entry_id: str, job_id: str, stop: asyncio.Event) -> None:
        """Start, train and end the job of one queue entry (or only acknowledge it, if the job has ended)."""
        with bind_ids(job_id=job_id):
            job = await self._start(entry_id, job_id, stop)
            if job is None:
                return
            await self.personalizer.publish(job_id, JobChanged(job))
            log.info("training.started", consumer=self.consumer, attempt=job.attempts, token=job.token)
            self.busy = True
            metrics.TRAINING_RUNNING.set(1)
            try:
                await self._train(entry_id, job, stop)
            finally:
                self.busy = False
                metrics.TRAINING_RUNNING.set(0)

    async def _start(self, entry_id: str, job_id: str, stop: asyncio.Event) -> TrainingJob | None:
        """Make the job running and this worker's; None when there is nothing to train."""
        for _ in range(START_TRIES):
            data = await self.store.get_record(JOB_KIND, job_id)
            job = None if data is None else TrainingJob.from_record(data)
            if job is None or job.terminal:  # cancelled while queued, or a duplicate entry of a job that ended
                await self.store.ack(QUEUE, GROUP, entry_id)
                return None
            if job.cancel_requested:  # flagged while no worker had it: it ends without training
                ended = await transitions.end(self.store, job_id, self.consumer, CANCELLED, {"error": CANCEL_ERROR},
                                              as_read=job)
                if ended is not None:
                    await self._finish(entry_id, ended, stop)
                    return None
            elif (started := await transitions.start(self.store, job, self.consumer)) is not None:
                return started
        log.warning("training.start_contended", consumer=self.consumer)  # the entry stays pending: tried again
        return None

    async def _train(self, entry_id: str, job: TrainingJob, stop: asyncio.Event) -> None:
        folder = work_dir(self.personalizer.adapters_dir, job.job_id)
        adapter_id = records.new_adapter_id()
        export = folder / f"export-{adapter_id}"  # renamed into the adapters folder only by _commit
        attempt = Attempt(self.personalizer, job.job_id, entry_id, self.consumer, heartbeat_s=self.config.heartbeat_s,
                          give_up_s=self.config.give_up_s, stop=stop)
        try:
            async with attempt:
                trainer, stats = await asyncio.to_thread(self._run_trainer, job, folder, attempt)
                await asyncio.to_thread(trainer.export, export, adapter_id, job.tenant)
        except TrainingStopped:
            await self._stopped(entry_id, job, attempt.reason or SHUTDOWN, stop)
        except Exception as exc:  # the trainer's own failure (the store is not used on its thread)
            log.exception("training.failed", consumer=self.consumer)
            await self._end(entry_id, job, FAILED, {"error": f"training failed: {exc}"}, stop)
        else:
            await self._commit(entry_id, job, adapter_id, export, stats, stop)
        finally:  # a partial export, or one this attempt did not commit
            await asyncio.to_thread(shutil.rmtree, export, True)

    def _run_trainer(self, job: TrainingJob, folder: Path, attempt: Attempt) -> tuple[AdapterTrainer, dict[str, Any]]:
        if attempt.halt.is_set():  # e.g. cancelled as it started: no need to load the model
            raise TrainingStopped("stopped before the first step")
        images = [Image.open(path).convert("RGB") for path in reference_paths(folder)]
        cfg = TrainConfig(token=job.token, class_word=job.class_word, method=job.method, steps=job.steps,
                          rank=job.rank, checkpoint_every=self.config.checkpoint_every,
                          preview_every=self.config.preview_every)
        trainer = AdapterTrainer(self.config.model_dir, cfg, images, folder, self.config.device)
        return trainer, trainer.run(attempt.on_progress, should_stop=attempt.halt.is_set)

    async def _commit(self, entry_id: str, job: TrainingJob, adapter_id: str, export: Path, stats: dict[str, Any],
                      stop: asyncio.Event) -> None:
        fields = {"step": job.steps, "adapter_id": adapter_id}
        try:
            done = await self._patiently(partial(transitions.end, self.store, job.job_id, self.consumer, SUCCEEDED,
                                                 fields), "commit", stop)
        except StoreError:
            log.error("training.commit_unknown", consumer=self.consumer, adapter_id=adapter_id)
            raise
        if done is None:  # cancelled at the last moment (then ours to end), or taken over meanwhile
            await self._end(entry_id, job, CANCELLED, {"error": CANCEL_ERROR}, stop)
            return
        # One rename: the adapter appears whole or not at all, and only as the job's own.
        await asyncio.to_thread(os.replace, export, adapter_dir(self.personalizer.adapters_dir, adapter_id))
        adapter = Adapter(adapter_id, job.token, job.class_word, job.method, job.job_id, job.steps, tenant=job.tenant)
        await self._patiently(partial(self.personalizer.register_adapter, adapter), "register adapter", stop)
        await self._patiently(partial(self.personalizer.publish, job.job_id, AdapterReady(adapter)), "event", stop)
        log.info("training.succeeded", adapter_id=adapter_id, train_s=round(stats["train_s"], 1),
                 final_loss=stats["final_loss"], resumed_from=stats["resumed_from"])
        await self._finish(entry_id, done, stop)

    async def _stopped(self, entry_id: str, job: TrainingJob, why: str, stop: asyncio.Event) -> None:
        if why == HALT_CANCELLED:
            await self._end(entry_id, job, CANCELLED, {"error": CANCEL_ERROR}, stop)
        elif why == SHUTDOWN:
            await self._hand_back(entry_id, job)
        else:  # lost to another worker, or the store failed too long to know: it is not ours to change
            await self._abandon(job, why)

    async def _hand_back(self, entry_id: str, job: TrainingJob) -> None:
        """Shutting down: the job goes straight to another worker (which resumes from the checkpoint) instead of
        waiting out the reclaim idle time. Bounded: a store that stays down leaves it to the reclaim."""
        def patiently(call: Callable[[], Awaitable[T]], what: str) -> Awaitable[T]:
            return retrying(call, what=what, backoff=Backoff(0.1, 1.0), give_up_s=self.config.give_up_s)

        try:
            queued = await patiently(partial(transitions.hand_back, self.store, job.job_id, self.consumer), "requeue")
            if queued is None:
                await self._abandon(job, "lost")
                return
            log.info("training.requeued", consumer=self.consumer)
            await patiently(partial(self.personalizer.publish, job.job_id, JobChanged(queued)), "event")
            await patiently(partial(self.store.enqueue, QUEUE, job.job_id.encode()), "enqueue")
            await patiently(partial(self.store.ack, QUEUE, GROUP, entry_id), "ack")
        except StoreError as exc:
            log.warning("training.requeue_failed", consumer=self.consumer, error=str(exc))

    async def _end(self, entry_id: str, job: TrainingJob, state: str, fields: dict[str, Any],
                   stop: asyncio.Event) -> None:
        ended = await self._patiently(partial(transitions.end, self.store, job.job_id, self.consumer, state, fields),
                                      f"end {state}", stop)
        if ended is None:
            await self._abandon(job, "lost")
            return
        await self._finish(entry_id, ended, stop)

    async def _finish(self, entry_id: str, job: TrainingJob, stop: asyncio.Event) -> None:
        await self._patiently(partial(self.personalizer.finish, job), "finish", stop)
        await self._patiently(partial(self.store.ack, QUEUE, GROUP, entry_id), "ack", stop)
        metrics.TRAINING_JOBS.labels(job.state).inc()
        log.info("training.ended", state=job.state, error=job.error or None)

    async def _abandon(self, job: TrainingJob, why: str) -> None:
        """Stop without changing the job. Its checkpoint stays for the worker that has it now; but once the job
        has ended, whatever this attempt wrote to the work folder after it was removed is an orphan."""
        log.warning("training.abandoned", consumer=self.consumer, reason=why)
        with contextlib.suppress(StoreError):
            data = await self.store.get_record(JOB_KIND, job.job_id)
            if data is None or TrainingJob.from_record(data).terminal:
                await asyncio.to_thread(shutil.rmtree, work_dir(self.personalizer.adapters_dir, job.job_id), True)

    async def _patiently(self, call: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event) -> T:
        """Steps that end a job are retried for as long as the store is down (a half-ended job helps no one),
        until the worker shuts down."""
        return await retrying(call, what=what, backoff=Backoff(0.1, 2.0), give_up_s=None, stop=stop)
