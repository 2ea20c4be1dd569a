"""A stand-in engine for domain tests: timed steps, no torch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from philip.generation.requests import GenerationParams, GenerationRequest, RequestResolver
from services.generator.batching import WorkItem
from services.generator.events import Cancelled, GeneratedImage, Preview, Progress, Result


class FakeEngine:
    """Runs batches step by step with asyncio.sleep, honouring cancellation like the real engine."""

    native_size = 64
    schedulers = ("dpm++", "euler")

    def __init__(self, step_s: float = 0.005, fail: bool = False) -> None:
        self.step_s = step_s
        self.fail = fail
        self.batches: list[list[str]] = []

    async def run(self, batch: Sequence[WorkItem]) -> None:
        self.batches.append([item.job_id for item in batch])
        if self.fail:
            raise RuntimeError("boom")
        live = list(batch)
        total = batch[0].request.steps
        for step in range(1, total + 1):
            await asyncio.sleep(self.step_s)
            for item in [i for i in live if i.cancel_reason]:
                live.remove(item)
                item.send(Cancelled(item.cancel_reason or ""))
            for item in live:
                item.send(Progress(step, total))
                if item.wants_preview(step, total):
                    item.send(Preview(step, ()))
        for item in live:
            images = tuple(GeneratedImage(b"png", 8, 8, seed, n) for n, seed in enumerate(item.request.image_seeds))
            item.send(Result(images))


def request(prompt: str = "a red circle", **changes: object) -> GenerationRequest:
    params = GenerationParams(prompt=prompt, **{"num_images": 1, "steps": 4, "seed": 1, **changes})  # type: ignore[arg-type]
    return RequestResolver(native_size=64, schedulers=FakeEngine.schedulers).resolve(params)
