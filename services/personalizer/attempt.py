"""What runs on the event loop while a worker thread trains a job: the heartbeat and the event pump.

The heartbeat touches the job's queue entry (so that no other worker reclaims it) and checks the record is still
this worker's; it stops the training (``halt``, honoured between two steps) when the job is cancelled, lost to
another worker, the worker shuts down, or the store has failed for ``give_up_s``: by then another worker may
have reclaimed the entry, and two trainings of one job must not both go on. Shorter outages (a Redis restart)
are ridden out with jittered backoff. The pump publishes the trainer's events in order, retrying the same way;
after ``give_up_s`` it drops them, since the attempt is being abandoned anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType

from philip.diffusion.executors import post_to_loop
from philip.images import png_bytes
from philip.logs import get_logger
from philip.store import Store, StoreError
from services.personalizer import transitions
from services.personalizer.records import (
    GROUP,
    JOB_KIND,
    QUEUE,
    RUNNING,
    SamplePreview,
    StepDone,
    TrainingEvent,
)
from services.personalizer.retrying import Backoff, retrying
from services.personalizer.service import Personalizer
from services.personalizer.trainer import TrainProgress

log = get_logger("services.personalizer.attempt")

SHUTDOWN, CANCELLED, LOST, UNREACHABLE = "shutdown", "cancelled", "lost", "unreachable"


class Attempt:
    """``async with Attempt(...) as a:`` train on a thread with ``a.on_progress`` and ``should_stop=a.halt.is_set``;
    ``a.reason`` then says why it was halted (None: it was not)."""

    def __init__(self, personalizer: Personalizer, job_id: str, entry_id: str, consumer: str, *,
                 heartbeat_s: float, give_up_s: float, stop: asyncio.Event) -> None:
        self.personalizer = personalizer
        self.store: Store = personalizer.store
        self.job_id, self.entry_id, self.consumer = job_id, entry_id, consumer
        self.tick = min(heartbeat_s, 0.25)
        self.give_up_s = give_up_s
        self.backoff_cap = max(self.tick, min(2.0, give_up_s / 4))  # several tries within the give-up time
        self.stop = stop
        self.halt = threading.Event()
        self.reason: str | None = None
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[TrainingEvent | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._dropping = False  # the pump gave up on the store: the rest of this attempt's events are dropped

    async def __aenter__(self) -> Attempt:
        self._tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._pump())]
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.halt.set()
        heartbeat, pump = self._tasks
        heartbeat.cancel()
        self._events.put_nowait(None)  # the pump publishes what is queued, then ends
        for task in (heartbeat, pump):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def on_progress(self, p: TrainProgress) -> None:
        """The trainer's callback (on its thread): hand the step's events to the pump."""
        for event in _to_events(p):
            post_to_loop(self._loop, self._events.put_nowait, event)

    def _stop_training(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            log.info("training.halting", consumer=self.consumer, reason=reason)
        self.halt.set()

    async def _heartbeat(self) -> None:
        backoff = Backoff(self.tick, self.backoff_cap)
        last_ok, failing = time.monotonic(), False
        while not self.halt.is_set():
            if self.stop.is_set():
                self._stop_training(SHUTDOWN)
                return
            try:
                verdict = await self._verdict()
            except StoreError as exc:  # unavailable, or an error we cannot judge: ownership unknown either way
                down_s = time.monotonic() - last_ok
                if down_s >= self.give_up_s:
                    log.error("training.store_unreachable", consumer=self.consumer, down_s=round(down_s, 1))
                    self._stop_training(UNREACHABLE)
                    return
                delay, failing = max(0.05, min(backoff.next(), self.give_up_s - down_s)), True
                log.warning("training.heartbeat_failed", consumer=self.consumer, down_s=round(down_s, 1),
                            retry_in_s=round(delay, 2), error=str(exc))
            else:
                if verdict is not None:
                    self._stop_training(verdict)
                    return
                if failing:
                    log.info("training.heartbeat_recovered", consumer=self.consumer,
                             down_s=round(time.monotonic() - last_ok, 1))
                last_ok, delay, failing = time.monotonic(), self.tick, False
                backoff.reset()
            await asyncio.sleep(delay)

    async def _verdict(self) -> str | None:
        """None while the job is still this worker's to train; else why to stop."""
        if not await self.store.touch(QUEUE, GROUP, self.consumer, self.entry_id):
            return LOST  # the entry was reclaimed by another worker (or acknowledged)
        current = await self.store.get_record(JOB_KIND, self.job_id)
        if current is None or current.get("state") != RUNNING or current.get("worker") != self.consumer:
            return LOST
        return CANCELLED if current.get("cancel_requested") else None

    async def _pump(self) -> None:
        backoff = Backoff(0.1, self.backoff_cap)
        while (event := await self._events.get()) is not None:
            if self._dropping:
                continue
            await self._patiently(partial(self.personalizer.publish, self.job_id, event), "training event", backoff)
            if isinstance(event, StepDone):
                await self._patiently(partial(transitions.record_step, self.store, self.job_id, self.consumer,
                                              event.step), "training step", backoff)

    async def _patiently(self, call: Callable[[], Awaitable[None]], what: str, backoff: Backoff) -> None:
        if self._dropping:
            return
        try:
            await retrying(call, what=what, backoff=backoff, give_up_s=self.give_up_s)
            backoff.reset()
        except StoreError as exc:
            self._dropping = True
            log.error("training.events_dropped", consumer=self.consumer, error=str(exc))


def _to_events(p: TrainProgress) -> list[TrainingEvent]:
    out: list[TrainingEvent] = [StepDone(p.step, p.total, p.loss if math.isfinite(p.loss) else 0.0,
                                         p.resumed_from or 0)]
    if p.preview is not None:
        out.append(SamplePreview(p.step, png_bytes(p.preview), p.preview.width, p.preview.height))
    return out
