"""What the families' engine tests share: a work item at 64 px, and the merged-batch check (two requests, one with
a negative prompt and VAE previews, in one run: each gets its previews at its size and its own images)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from PIL import Image

from philip.generation.requests import GenerationParams, RequestResolver
from services.generator.batching import WorkItem
from services.generator.engine import DiffusionEngine
from services.generator.events import JobEvent, Preview, Result


def work_item(engine: DiffusionEngine, events: list[JobEvent], steps: int, **params: Any) -> WorkItem:
    resolver = RequestResolver(native_size=engine.native_size, schedulers=engine.schedulers, defaults=engine.defaults)
    request = resolver.resolve(GenerationParams(**({"width": 64, "height": 64, "steps": steps, "preview_every": 2}
                                                   | params)))
    return WorkItem(f"job-{len(events)}-{params['seed']}", request, events.append, preview_every=2)


def check_a_merged_batch_with_previews(engine: DiffusionEngine, steps: int) -> None:
    first: list[JobEvent] = []
    second: list[JobEvent] = []
    items = [work_item(engine, first, steps, prompt="a red circle", num_images=2, seed=1),
             work_item(engine, second, steps, prompt="a blue square", negative_prompt="blurry", num_images=1, seed=9,
                       preview_mode="vae")]
    asyncio.run(engine.run(items))
    for events, count, preview_size in ((first, 2, (16, 16)), (second, 1, (64, 64))):
        previews = [e for e in events if isinstance(e, Preview)]
        assert [p.step for p in previews] == [2]  # with 3 or 4 steps; the last step's preview is the result itself
        assert all(Image.open(io.BytesIO(i.png)).size == preview_size for p in previews for i in p.images)
        result = events[-1]
        assert isinstance(result, Result) and len(result.images) == count
        assert all((i.width, i.height) == (64, 64) for i in result.images)
    assert len({i.png for e in (first[-1], second[-1]) if isinstance(e, Result) for i in e.images}) == 3
