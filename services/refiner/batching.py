"""The refiner's round queue: concurrent sessions' rounds share UNet batches, as the generator's jobs do.

Rounds whose :attr:`~services.refiner.batch_round.RoundWork.key` matches (size, steps, scheduler, guidance,
adapter set) ride in one pipeline call, up to ``max_batch`` images, by the policy the generator's queue uses
(:mod:`philip.batch_policy`). At most ``max_queue`` rounds wait; beyond that RESOURCE_EXHAUSTED with a retry
hint of one batch time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from philip.batch_policy import next_batch
from philip.logs import get_logger
from philip.rpc.errors import PhilipError, ResourceExhausted, Unavailable
from services.refiner.batch_round import RoundWork

if TYPE_CHECKING:
    from services.refiner.round_types import FeedbackRound
    from services.refiner.rounds import RoundRunner

log = get_logger("services.refiner.batching")


@dataclass(eq=False)
class _Waiting:
    work: RoundWork
    future: asyncio.Future[FeedbackRound]
    arrived: float = field(default_factory=time.monotonic)


class RoundQueue:
    """Bounded FIFO of rounds feeding one :class:`~services.refiner.rounds.RoundRunner`, one batch at a time."""

    def __init__(self, runner: RoundRunner, *, max_queue: int = 8, max_batch: int = 8,
                 batch_window_ms: int = 15) -> None:
        self.runner = runner
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.window_s = batch_window_ms / 1000
        self._pending: list[_Waiting] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batch_s = 1.0  # moving average of batch durations, for retry hints
        self._closing = False
        self.batches = 0  # pipeline calls so far (benchmarks and tests read it)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def run(self, work: RoundWork) -> FeedbackRound:
        """Queue ``work`` and wait for its round; cancelling the caller cancels the round within one step."""
        if self._closing:
            raise Unavailable("the refiner is shutting down; retry on another replica")
        if len(self._pending) >= self.max_queue:
            retry = round(max(0.1, self._batch_s), 1)
            raise ResourceExhausted(f"{len(self._pending)} rounds are waiting on this refiner (limit "
                                    f"{self.max_queue}); retry in about {retry} s or on another replica",
                                    retry_after_s=retry)
        waiting = _Waiting(work, asyncio.get_running_loop().create_future())
        self._pending.append(waiting)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="refiner-queue")
        try:
            return await asyncio.shield(waiting.future)
        except asyncio.CancelledError:
            work.cancel.set()  # a queued round is dropped before it starts; a running one after this step
            if waiting in self._pending:
                self._pending.remove(waiting)
            else:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await waiting.future
            raise

    async def close(self) -> None:
        """Refuse new rounds, fail the waiting ones (UNAVAILABLE: another replica can run them) and stop the
        running batch within one step."""
        self._closing = True
        for waiting in list(self._pending):
            waiting.work.cancel.set()
            if not waiting.future.done():
                waiting.future.set_exception(Unavailable("the refiner is shutting down; retry on another replica"))
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _next_batch(self) -> list[_Waiting]:
        return await next_batch(self._pending, self._changed, key=lambda w: w.work.key,
                                size=lambda w: w.work.params.num_images, arrived=lambda w: w.arrived,
                                max_batch=self.max_batch, window_s=self.window_s)

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            for waiting in batch:
                self._pending.remove(waiting)
            batch = [w for w in batch if not w.future.done()]
            if not batch:
                continue
            started = time.monotonic()
            try:
                outcomes = await self.runner.refine_batch([w.work for w in batch])
            except asyncio.CancelledError:  # close(): the batch stopped within a step; its callers must hear
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(Unavailable("the refiner stopped during this round; retry"))
                raise
            except Exception as exc:  # the batch as a whole failed: every round gets the error
                log.exception("refiner.batch_failed", rounds=len(batch))
                outcomes = [exc] * len(batch)  # type: ignore[list-item]
            self.batches += 1
            self._batch_s = 0.7 * self._batch_s + 0.3 * (time.monotonic() - started)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    waiting.future.set_exception(outcome if isinstance(outcome, PhilipError) else PhilipError(
                        f"refinement failed: {type(outcome).__name__}: {outcome}"))
                else:
                    waiting.future.set_result(outcome)
