"""The refiner's domain: feedback rounds and upscales.

A replica owns one pipeline (:class:`~services.refiner.rounds.RoundRunner`); rounds wait in a
:class:`~services.refiner.batching.RoundQueue` that merges compatible rounds of different sessions
into one batch; at most ``max_queue`` may wait, beyond that callers get RESOURCE_EXHAUSTED and retry on
another replica. A round streams :class:`RoundStarted`, :class:`StepDone`, :class:`PreviewReady`
and finally :class:`RoundDone`; closing the stream early (client gone, deadline) cancels the
round within one denoising step. Upscales run the ONNX model beside rounds (another runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from PIL import Image

from philip.diffusion.executors import post_to_loop
from philip.exploration import RoundChoice, SessionDefaults, SlotConstraints
from philip.feedback_weights import parse_weights
from philip.generation.requests import GenerationParams, RequestResolver
from philip.rpc.errors import InvalidArgument
from services.refiner.batch_round import RoundWork
from services.refiner.batching import RoundQueue
from services.refiner.round_types import Feedback, FeedbackImage, FeedbackRound, RoundParams
from services.refiner.rounds import RoundRunner
from services.refiner.upscale import UpscaleEvent, Upscaler

MAX_REFERENCES = 16  # liked (and disliked) images per round: each costs a reference pass per step


@dataclass(frozen=True)
class RefineJob:
    """A validated round: batch parameters, all feedback so far, preview rate."""

    params: RoundParams
    feedback: Feedback
    preview_every: int
    round_id: str


@dataclass(frozen=True)
class RoundStarted:
    pass


@dataclass(frozen=True)
class StepDone:
    step: int
    total_steps: int


@dataclass(frozen=True)
class PreviewReady:
    step: int
    images: tuple[Image.Image, ...]


@dataclass(frozen=True)
class RoundDone:
    result: FeedbackRound


RefineEvent = RoundStarted | StepDone | PreviewReady | RoundDone


class Refiner:
    """Validates requests (as the generator does) and runs them through a :class:`RoundQueue` that batches
    concurrent rounds on one :class:`RoundRunner`."""

    def __init__(self, runner: RoundRunner, upscaler: Upscaler | None, resolver: RequestResolver, *,
                 max_queue: int = 8, defaults: SessionDefaults | None = None, max_batch: int = 8,
                 batch_window_ms: int = 15) -> None:
        self.runner = runner
        self.upscaler = upscaler
        self.resolver = resolver
        self.max_queue = max_queue
        self.queue = RoundQueue(runner, max_queue=max_queue, max_batch=max_batch, batch_window_ms=batch_window_ms)
        # What a session without weights gets (GetDefaults); the vocabulary is the runner's.
        self.defaults = defaults or SessionDefaults({}, slots=runner.vocabulary.slots if runner.vocabulary else ())

    async def close(self) -> None:
        """Stop the queue (waiting rounds are cancelled) and free the pipeline's thread."""
        await self.queue.close()
        await asyncio.to_thread(self.runner.close)

    def job(self, params: GenerationParams, liked: Sequence[FeedbackImage], disliked: Sequence[FeedbackImage],
            weights: dict[str, float], round_id: str = "", history: Sequence[RoundChoice] = (),
            constraints: SlotConstraints = SlotConstraints()) -> RefineJob:
        """Resolve ``params`` with the generator's rules and check the feedback."""
        request = self.resolver.resolve(params)
        for name, refs in (("liked", liked), ("disliked", disliked)):
            if len(refs) > MAX_REFERENCES:
                raise InvalidArgument(f"{name} takes 0-{MAX_REFERENCES} images (the most recent), got {len(refs)}",
                                      field=name)
        schedule, diversity, explore = parse_weights(weights)
        if constraints:
            constraints.check(self.defaults.slots)
        feedback = Feedback(liked=tuple(liked), disliked=tuple(disliked), weights=schedule, diversity=diversity,
                            explore=explore, history=tuple(history), constraints=constraints)
        round_params = RoundParams(
            prompt=request.prompt, negative_prompt=request.negative_prompt, width=request.width,
            height=request.height, steps=request.steps, guidance=request.guidance, scheduler=request.scheduler,
            num_images=request.num_images, seed=request.seed, adapter_ids=request.adapter_ids,
        )
        return RefineJob(round_params, feedback, request.preview_every, round_id)

    async def refine(self, job: RefineJob) -> AsyncGenerator[RefineEvent, None]:
        """Queue the round (batched with other sessions' compatible rounds) and stream it; closing the iterator
        cancels it within one step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[RefineEvent] = asyncio.Queue()

        def later(event: RefineEvent) -> None:  # from the worker thread
            post_to_loop(loop, events.put_nowait, event)

        work = RoundWork(job.params, job.feedback, on_step=lambda step, total: later(StepDone(step, total)),
                         preview_every=job.preview_every,
                         on_preview=lambda step, images: later(PreviewReady(step, tuple(images))),
                         on_start=lambda: later(RoundStarted()))
        task = asyncio.ensure_future(self.queue.run(work))
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                yield getter.result()
            result = await task
            await asyncio.sleep(0)  # the worker's last call_soon_threadsafe callbacks run first
            while not events.empty():  # reported just before the result
                yield events.get_nowait()
        finally:
            if not task.done():  # the caller went away: stop the round within one step
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        yield RoundDone(result)

    async def upscale(self, png: bytes, scale: int) -> AsyncIterator[UpscaleEvent]:
        if self.upscaler is None:
            raise InvalidArgument("this refiner has no upscaler configured (PHILIP_UPSCALER_PATH)", field="image")
        async for event in self.upscaler.upscale(png, scale):
            yield event
