"""The generation queue: a bounded FIFO of jobs, merged into pipeline batches by compatibility.

Requests whose batch-wide parameters match (``BatchKey``) share one pipeline call, up to
``max_batch`` images; the oldest waiting job always leads the next batch, so nothing starves.
A batch leaves ``batch_window_ms`` after its leader was queued (or at once when full), which
lets near-simultaneous requests meet without delaying jobs that already waited.

Plain asyncio on the event loop; the ``BatchRunner`` (the diffusion engine) does the heavy
work elsewhere and reports through each item's ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from philip import metrics
from philip.batch_policy import next_batch
from philip.generation.requests import GenerationRequest
from philip.logs import get_logger
from philip.rpc.errors import PhilipError, ResourceExhausted
from services.generator.events import Cancelled, Failed, JobEvent, Queued, Started, is_terminal

log = get_logger("services.generator.batching")


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Parameters that must be equal for requests to share one pipeline call."""

    width: int
    height: int
    steps: int
    scheduler: str
    guidance: float
    adapter_ids: tuple[str, ...]  # sorted: the adapter *set*
    preview_mode: str

    @classmethod
    def of(cls, request: GenerationRequest) -> BatchKey:
        return cls(request.width, request.height, request.steps, request.scheduler, request.guidance,
                   tuple(sorted(request.adapter_ids)), request.preview_mode)


@dataclass(eq=False)
class WorkItem:
    """One job waiting for, or riding in, a batch.

    Owned by the event loop. The engine's worker thread only reads ``cancel_reason`` and
    ``preview_every`` (single attribute reads, atomic under the GIL) and hands events back to
    the loop, which calls ``send``.
    """

    job_id: str
    request: GenerationRequest
    emit: Callable[[JobEvent], None]
    preview_every: int = 0
    cancel_reason: str | None = None
    done: bool = False
    enqueued_at: float = field(default_factory=time.monotonic)
    last_position: int | None = None

    @property
    def key(self) -> BatchKey:
        return BatchKey.of(self.request)

    @property
    def num_images(self) -> int:
        return self.request.num_images

    def send(self, event: JobEvent) -> None:
        """Forward an event; anything after the terminal event is dropped (e.g. a late result)."""
        if self.done:
            return
        self.done = is_terminal(event)
        self.emit(event)

    def wants_preview(self, step: int, total_steps: int) -> bool:
        # The last step is skipped: the result, one event later, shows the same thing in full.
        every = self.preview_every
        return every > 0 and step % every == 0 and step < total_steps


class BatchRunner(Protocol):
    """Runs one merged batch; reports progress/previews and one terminal event per item via ``send``."""

    async def run(self, batch: Sequence[WorkItem]) -> None: ...


class GenerationQueue:
    """Bounded queue of ``WorkItem`` s feeding one ``BatchRunner``, one batch at a time."""

    def __init__(self, runner: BatchRunner, *, max_queue: int, max_batch: int, batch_window_ms: int) -> None:
        self.runner = runner
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.window_s = batch_window_ms / 1000
        self._pending: list[WorkItem] = []
        self._running: list[WorkItem] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set while no batch is running
        self._idle.set()
        self._closing = False
        self._batch_s = 1.0  # moving average of batch durations, for retry hints

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> list[WorkItem]:
        return list(self._running)

    def submit(self, item: WorkItem) -> None:
        """Queue ``item`` (it gets a Queued event at once) or raise ResourceExhausted when full."""
        if self._closing:
            raise ResourceExhausted("the generator is shutting down; retry on another replica", retry_after_s=1.0)
        if len(self._pending) >= self.max_queue:
            metrics.REJECTED.inc()
            # A slot frees when the running batch ends, so one batch time is an honest hint.
            retry = round(max(0.1, self._batch_s), 1)
            raise ResourceExhausted(
                f"generation queue is full ({len(self._pending)} jobs queued, limit {self.max_queue}); "
                f"retry in about {retry} s",
                retry_after_s=retry,
            )
        self._pending.append(item)
        metrics.QUEUE_DEPTH.set(len(self._pending))
        self._announce_positions()
        self._ensure_started()
        self._changed.set()

    def cancel(self, item: WorkItem, reason: str) -> None:
        """Cancel a queued item now, or ask the runner to drop a running one at its next step."""
        if item.done:
            return
        if item in self._pending:
            self._pending.remove(item)
            item.send(Cancelled(reason))
            self._announce_positions()
            self._changed.set()
        else:
            item.cancel_reason = reason

    async def close(self, reason: str = "shutdown") -> None:
        """Cancel everything queued or running and wait for the current batch to stop."""
        self._closing = True
        for item in list(self._pending):
            self.cancel(item, reason)
        for item in self._running:
            self.cancel(item, reason)
        # The runner honours cancellation within one step; let it report before stopping the loop.
        await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="generation-queue")

    def _announce_positions(self) -> None:
        for position, item in enumerate(self._pending):
            if item.last_position != position:
                item.last_position = position
                item.send(Queued(position))

    async def _next_batch(self) -> list[WorkItem]:
        return await next_batch(self._pending, self._changed, key=lambda i: i.key, size=lambda i: i.num_images,
                                arrived=lambda i: i.enqueued_at, max_batch=self.max_batch, window_s=self.window_s)

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            for item in batch:
                self._pending.remove(item)
            self._announce_positions()
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._running = batch
            self._idle.clear()
            size = sum(item.num_images for item in batch)
            for item in batch:
                item.send(Started(size))
            started = time.monotonic()
            try:
                await self.runner.run(batch)
            except asyncio.CancelledError:
                raise
            except PhilipError as exc:
                for item in batch:
                    item.send(Failed(exc.code, exc.message))
            except Exception as exc:
                log.exception("batch.failed", jobs=[item.job_id for item in batch])
                for item in batch:
                    item.send(Failed("INTERNAL", f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                for item in batch:  # a runner that forgot an item must not leave its client hanging
                    reason = item.cancel_reason
                    item.send(Cancelled(reason) if reason else Failed("INTERNAL", "generation ended without a result"))
                self._running = []
                self._idle.set()
            self._batch_s = 0.7 * self._batch_s + 0.3 * (time.monotonic() - started)
            metrics.BATCH_IMAGES.observe(size)
            metrics.BATCH_SECONDS.observe(time.monotonic() - started)
