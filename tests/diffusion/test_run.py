"""The denoising-run seam without a model: rows and drops, callback order, the scheduler swap, the device thread."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from philip.diffusion.callbacks import DropCancelled, RenderPreviews, ReportProgress
from philip.diffusion.executors import DeviceWorker, device_executor, post_to_loop
from philip.diffusion.run import DenoisingRun
from philip.diffusion.schedulers import swapped_scheduler
from philip.previews import UNetCapture
from philip.priority import DEVICE


class FakePipe:
    """Calls ``callback_on_step_end`` after each of ``num_inference_steps`` steps, as diffusers does."""

    def __init__(self) -> None:
        self.scheduler = DDIMScheduler()
        self.schedulers_seen: list[str] = []
        self.steps_run = 0

    def __call__(self, *, num_inference_steps: int, callback_on_step_end: Any, output_type: str,
                 rows: int) -> Any:
        assert output_type == "latent"
        self._interrupt = False
        for i in range(num_inference_steps):
            if self._interrupt:
                continue
            self.steps_run += 1
            self.schedulers_seen.append(type(self.scheduler).__name__)
            callback_on_step_end(self, i, i, {})
        return SimpleNamespace(images=torch.zeros(rows, 4, 2, 2))


@dataclass(eq=False)
class Member:
    images: int
    cancel_at: int = 0  # cancelled once this step is reported
    log: list[tuple[str, int]] = field(default_factory=list)

    def check_cancelled(self, after_step: int) -> bool:
        cancelled = 0 < self.cancel_at <= after_step
        if cancelled:
            self.log.append(("cancelled", after_step))
        return cancelled

    def progress(self, step: int, total: int) -> None:
        self.log.append(("progress", step))

    def wants_preview(self, step: int, total: int) -> bool:
        return False

    def preview(self, step: int, x0: torch.Tensor) -> None:  # pragma: no cover - never wanted here
        raise AssertionError


def test_members_take_consecutive_rows_and_a_cancel_drops_only_its_own() -> None:
    pipe, a, b = FakePipe(), Member(2), Member(1, cancel_at=2)
    run = DenoisingRun(pipe, UNetCapture(), [a, b], scheduler="euler", steps=4)
    assert run.rows == {a: slice(0, 2), b: slice(2, 3)}
    run([ReportProgress(run), RenderPreviews(run), DropCancelled(run)], rows=3)
    assert b.log == [("progress", 1), ("progress", 2), ("cancelled", 2)]  # progress first: dropped at once
    assert a.log == [("progress", s) for s in (1, 2, 3, 4)] and run.live == [a] and run.step == 4
    assert pipe.schedulers_seen == ["EulerDiscreteScheduler"] * 4 and isinstance(pipe.scheduler, DDIMScheduler)


def test_the_remaining_steps_are_skipped_once_every_member_is_dropped() -> None:
    pipe, only = FakePipe(), Member(1, cancel_at=1)
    run = DenoisingRun(pipe, UNetCapture(), [only], scheduler="ddim", steps=5)
    run([DropCancelled(run), ReportProgress(run)], rows=1)
    assert pipe.steps_run == 1 and only.log == [("cancelled", 1)]  # checked before progress: none reported
    assert run.live == [] and run.decode_live(torch.zeros(1, 4, 2, 2)) == []


def test_the_pipelines_own_scheduler_comes_back_after_a_failure() -> None:
    pipe = FakePipe()
    with pytest.raises(RuntimeError), swapped_scheduler(pipe, "euler") as scheduler:
        assert isinstance(scheduler, EulerDiscreteScheduler) and pipe.scheduler is scheduler
        raise RuntimeError
    assert isinstance(pipe.scheduler, DDIMScheduler)


async def test_one_interactive_thread_per_device_and_a_stop_that_is_waited_for() -> None:
    assert device_executor("cpu") is device_executor(torch.device("cpu"))
    first, second = DeviceWorker("cpu"), DeviceWorker(torch.device("cpu"))
    threads = {await w.run(threading.get_ident) for w in (first, second)}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert await first.run(lambda: DEVICE.busy) == 1
    stop, finished = threading.Event(), threading.Event()

    def work() -> None:
        stop.wait(5)
        finished.set()

    task = asyncio.ensure_future(first.run(work, stop=stop.set))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()  # the worker had returned before the cancel propagated
    first.close()


def test_posting_to_a_closed_loop_is_dropped() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    post_to_loop(loop, print, "nobody listens")
